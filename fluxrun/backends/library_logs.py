"""The model libraries' own output, made into ordinary log records.

diffusers and transformers log through handlers of their own (not propagated to the root
logger) and draw tqdm progress bars while loading; torch's logging (``torch._logging``) puts
its own handler and format (``W1123 22:25:17.575000 pid path:line] ...``) on the ``torch``
logger. With JSON logs every line of a worker's output must be a JSON object, so all their
records go to the root handler and the bars are off.
"""

from __future__ import annotations

import logging


def route_library_logs() -> None:
    # torch first: transformers imports torchao when it is installed, and torchao's import
    # already logs a torch warning through torch's handler.
    import torch  # noqa: F401  (torch._logging installs its handler at import)

    torch_logger = logging.getLogger("torch")
    for handler in list(torch_logger.handlers):
        torch_logger.removeHandler(handler)
    torch_logger.propagate = True

    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # downloads and shard writes

    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()
        library.enable_propagation()
        library.disable_progress_bar()
