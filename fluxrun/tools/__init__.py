"""The catalog: one declarative spec per tool. No torch here."""
