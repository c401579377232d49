"""llama-server's slot actions: ``POST /slots/{id_slot}?action=save|restore|erase`` (``GET /slots``
lists the slots, server/lifecycle).

A slot's state (its prompt tokens, KV or recurrent state and checkpoints) is written to or read
from a file named by the request, inside ``--slot-save-path``; ``erase`` empties the slot. The
answers are llama-server's (``n_saved``/``n_written``, ``n_restored``/``n_read``, ``n_erased``,
``timings``). ``?model=`` picks the model when the server has several (default: the first).
A file saved from another model or memory layout, or a corrupt one, is refused (400) and never
given to llama.cpp.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field

from ggufworker.errors import InvalidRequestError
from ggufworker.server.core.openapi import openai_errors
from ggufworker.server.core.protocol import LenientModel

router = APIRouter()  # API keys are checked by APIKeyMiddleware

# a plain file name: no directories, no leading dot (llama-server validates the same way)
_FILENAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,254}")


class SlotFileRequest(LenientModel):
    """The body of a save or restore (erase needs none)."""

    filename: str | None = Field(
        default=None, description="file name inside --slot-save-path (no directories)"
    )


class SlotTimings(BaseModel):
    save_ms: float | None = None
    restore_ms: float | None = None


class SlotActionResponse(BaseModel):
    """llama-server's answer: the fields of the action taken."""

    id_slot: int
    filename: str | None = None
    n_saved: int | None = Field(default=None, description="tokens saved")
    n_written: int | None = Field(default=None, description="bytes written")
    n_restored: int | None = Field(default=None, description="tokens restored")
    n_read: int | None = Field(default=None, description="bytes read")
    n_erased: int | None = Field(default=None, description="tokens dropped")
    timings: SlotTimings | None = None


async def _engine(request: Request, model: str | None) -> tuple[Any, Any]:
    lease = await request.app.state.manager.acquire(model)
    engine = lease.engine
    if not hasattr(engine, "save_slot"):
        lease.release()
        raise InvalidRequestError("slot actions need one replica per model", param="model")
    return lease, engine


def _file(request: Request, filename: str | None) -> Path:
    directory = request.app.state.settings.slot_save_path
    if directory is None:
        raise InvalidRequestError(
            "slot files are off: start the server with --slot-save-path DIR", param="action"
        )
    if not filename or not _FILENAME.fullmatch(filename) or ".." in filename:
        raise InvalidRequestError(
            "filename must be a plain file name (letters, digits, '.', '_', '-')",
            param="filename",
        )
    return Path(directory) / filename


@router.post(
    "/slots/{id_slot}",
    summary="save an idle slot's prompt state to a file, restore it, or erase the slot",
    response_model=SlotActionResponse,
    response_model_exclude_none=True,
    responses=openai_errors(400, 404, 500, 503),
)
async def slot_action(
    request: Request,
    id_slot: int,
    action: Literal["save", "restore", "erase"] = Query(description="what to do with the slot"),
    model: str | None = Query(default=None, description="model name (default: the first)"),
    body: SlotFileRequest | None = None,
) -> SlotActionResponse:
    filename = body.filename if body is not None else None
    path = _file(request, filename) if action != "erase" else None
    lease, engine = await _engine(request, model)
    try:
        if action == "erase":
            n = await asyncio.to_thread(engine.erase_slot, id_slot)
            return SlotActionResponse(id_slot=id_slot, n_erased=n)
        assert path is not None
        if action == "save":
            done = await asyncio.to_thread(engine.save_slot, id_slot, path)
            return SlotActionResponse(
                id_slot=id_slot, filename=filename, n_saved=done.n_tokens,
                n_written=done.n_bytes, timings=SlotTimings(save_ms=round(done.ms, 3)),
            )  # fmt: skip
        done = await asyncio.to_thread(engine.restore_slot, id_slot, path)
        return SlotActionResponse(
            id_slot=id_slot, filename=filename, n_restored=done.n_tokens,
            n_read=done.n_bytes, timings=SlotTimings(restore_ms=round(done.ms, 3)),
        )  # fmt: skip
    finally:
        lease.release()
