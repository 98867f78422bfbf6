"""Ways of making images: one file per backend. torch is imported only in this package."""
