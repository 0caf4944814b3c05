"""The client store as a route dependency: ``app.state.client_store``, opened in the lifespan.
(``app.state.store`` is the model store.) And the seal of the store's page cursors
(:func:`cursor_seal`), which the JSON caseload, a client's risk history and the dashboard share.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.audit import ClientRefs
from service.store.cursors import CursorSeal
from service.store.db import Store

#: The label the cursor key is derived under: a key of its own, not the dashboard cookie's (one
#: key, one job). ``ClientRefs.derive`` hashes it in a domain of its own (a prefix byte no
#: audit reference starts with), so no client id can make an audit line hold this key.
_CURSOR_KEY_LABEL = "\x00alliance-risk page cursor key"


async def get_client_store(request: Request) -> Store:
    return request.app.state.client_store


ClientStoreDep = Annotated[Store, Depends(get_client_store)]


def cursor_seal(refs: ClientRefs) -> CursorSeal:
    """The page cursors' AES-256-SIV seal, keyed by an HMAC-SHA256 of a fixed label under the
    audit key: the one secret every worker of a ``serve`` (and every host behind one store)
    loads the same, so a cursor issued by one worker opens in another. Rotating the audit key
    ends every cursor issued before (the caller starts again from the first page)."""
    return CursorSeal(bytes.fromhex(refs.derive(_CURSOR_KEY_LABEL)))


def request_cursor_seal(request: Request) -> CursorSeal:
    """:func:`cursor_seal` of the app's audit key, derived once per app (``app.state``) and
    again only if the app's key object is replaced: every caseload poll, a 304 included, opens
    its cursor and names the key in its ETag."""
    state = request.app.state
    refs = state.security.refs
    cached: tuple[ClientRefs, CursorSeal] | None = getattr(state, "cursor_seal", None)
    if cached is None or cached[0] is not refs:
        cached = (refs, cursor_seal(refs))
        state.cursor_seal = cached
    return cached[1]
