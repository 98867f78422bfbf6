"""GET /files/{key}/{name}: output files, no headers needed (like the hosted CDN links).

The key is the task's unguessable output key (or, for a later attempt of a task, the key of
that attempt: storage.base.attempt_key); anything that is not an address fluxrun
made (``..``, other names, other folders) is a 404.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, HTTPException
from fastapi.responses import FileResponse

from fluxrun.api.state import AppState, app_state
from fluxrun.storage.local import LocalStorage

router = APIRouter()

_MEDIA = {"png": "image/png", "jpeg": "image/jpeg"}


@router.get(
    "/files/{key}/{name}",
    summary="An output file, at the url its task gives; no headers needed",
    response_class=FileResponse,
    responses={
        200: {"description": "the image", "content": {media: {"schema": {"type": "string", "format": "binary"}}
                                                       for media in _MEDIA.values()}},
        404: {"description": "No such file", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
    },
)
def output_file(key: str, name: str, state: AppState = Depends(app_state)) -> FileResponse:
    storage = state.storage
    path = storage.path(key, name) if isinstance(storage, LocalStorage) else None
    if path is None:
        raise HTTPException(status_code=404, detail="File not found.")
    media_type = _MEDIA[name.rsplit(".", 1)[1]]
    # A task's files never change once written under its key.
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private, max-age=31536000, immutable"})
