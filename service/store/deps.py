"""The client store as a route dependency: ``app.state.client_store``, opened in the lifespan.
(``app.state.store`` is the model store.)"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.store.db import Store


async def get_client_store(request: Request) -> Store:
    return request.app.state.client_store


ClientStoreDep = Annotated[Store, Depends(get_client_store)]
