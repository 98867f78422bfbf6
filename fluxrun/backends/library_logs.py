"""The model libraries' own output, made into ordinary log records.

diffusers and transformers log through handlers of their own (not propagated to the root
logger) and draw tqdm progress bars while loading; with JSON logs every line of a worker's
output must be a JSON object, so their records go to the root handler and the bars are off.
"""

from __future__ import annotations


def route_library_logs() -> None:
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging
    from huggingface_hub.utils import disable_progress_bars

    disable_progress_bars()  # downloads and shard writes

    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()
        library.enable_propagation()
        library.disable_progress_bar()
