"""Dependencies shared by the routes: the store, the settings, the caller."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from optuna.storages import RDBStorage

from service.auth import LOCAL, principal_for, token_from_header
from service.errors import ApiError
from service.settings import Settings
from service.studies import Principal, StudyView, get_study

# The dependencies that touch no database are ``async``: FastAPI would run a plain ``def``
# dependency on a worker thread, a hop these do not need.

async def get_storage(request: Request) -> RDBStorage:
    return request.app.state.storage


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def current_user(request: Request) -> Principal:
    settings: Settings = request.app.state.settings
    if settings.auth == "none":
        return LOCAL
    token = token_from_header(request.headers.get("authorization"))
    who = await run_in_threadpool(principal_for, request.app.state.storage.engine, token) \
        if token else None
    if who is None:
        raise ApiError(401, "a valid API token is required (Authorization: Bearer <token>)")
    return who


StorageDep = Annotated[RDBStorage, Depends(get_storage)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
CurrentUser = Annotated[Principal, Depends(current_user)]


# Study ids and trial numbers are 32-bit integers in Optuna's tables; a larger one would make
# SQLite raise OverflowError (a 500) instead of finding nothing.
MAX_ID = 2**31 - 1


def study_of(study_id: Annotated[int, Path(ge=1, le=MAX_ID, description="the study's id")],
             storage: StorageDep, who: CurrentUser) -> StudyView:
    return get_study(storage, study_id, who)


StudyDep = Annotated[StudyView, Depends(study_of)]
