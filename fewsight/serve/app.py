"""The routes: the page, its static files, the JSON API over one `Session`, and the OpenAPI document."""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from fewsight.errors import FewsightError
from fewsight.serve.guards import SECURITY_HEADERS, guards
from fewsight.serve.openapi import document
from fewsight.serve.session import Predicted, Session
from fewsight.serve.uploads import UploadError, read_files
from fewsight.use.export import EXPORT_FORMATS

STATIC = Path(__file__).parent / "static"


def _session(request: Request) -> Session:
    return request.app.state.session


async def page(request: Request) -> FileResponse:
    return FileResponse(STATIC / "index.html")


async def openapi(request: Request) -> JSONResponse:
    try:
        fewsight_version = version("fewsight")
    except PackageNotFoundError:
        fewsight_version = "unknown"
    return JSONResponse(document(fewsight_version))


async def model(request: Request) -> JSONResponse:
    return JSONResponse(_session(request).info())


async def classes(request: Request) -> JSONResponse:
    return JSONResponse(_session(request).state())


async def add_class(request: Request) -> JSONResponse:
    try:
        body = json.loads(await request.body())
    except ValueError as error:
        raise UploadError('send JSON: {"name": "a class name"}') from error
    except RecursionError as error:
        raise UploadError('the JSON is nested too deeply; send {"name": "a class name"}') from error
    _session(request).add_class(body.get("name") if isinstance(body, dict) else None)
    return JSONResponse(_session(request).state(), status_code=201)


async def remove_class(request: Request) -> JSONResponse:
    _session(request).remove_class(request.path_params["name"])
    return JSONResponse(_session(request).state())


async def class_image(request: Request) -> Response:
    name, index = request.path_params["name"], request.path_params["index"]
    return _png(await run_in_threadpool(_session(request).image, name, index))


def _png(data: bytes) -> Response:
    return Response(data, media_type="image/png", headers={"Cache-Control": "no-store"})


async def add_images(request: Request) -> JSONResponse:
    session = _session(request)
    files = await read_files(request, session.limits)
    await run_in_threadpool(session.add_images, request.path_params["name"], files)
    return JSONResponse(session.state())


async def adapt(request: Request) -> JSONResponse:
    adapted = await run_in_threadpool(_session(request).adapt)
    return JSONResponse({"classes": adapted.names, "seconds": adapted.seconds})


async def predict(request: Request) -> JSONResponse:
    session = _session(request)
    files = await read_files(request, session.limits)
    return JSONResponse(_predictions(*await run_in_threadpool(session.predict, files)))


def _predictions(last: Predicted | None, current: bool) -> dict:
    """The predictions' JSON form: per image its file name, predicted class and probabilities."""
    if last is None:
        return {"classes": [], "predictions": [], "adapt_seconds": 0.0, "current": False}
    rows = [
        {
            "file": p.path,
            "predicted": p.predicted,
            "probability": p.probability,
            "probabilities": p.probabilities,
        }
        for p in last.predictions
    ]
    adapted = last.adapted
    return {
        "classes": adapted.names,
        "predictions": rows,
        "adapt_seconds": adapted.seconds,
        "current": current,
    }


async def last_predictions(request: Request) -> JSONResponse:
    return JSONResponse(_predictions(*_session(request).last()))


async def query_image(request: Request) -> Response:
    return _png(await run_in_threadpool(_session(request).query_image, request.path_params["index"]))


async def predictions_csv(request: Request) -> Response:
    return Response(
        _session(request).predictions_csv(),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="predictions.csv"'},
    )


async def export(request: Request) -> Response:
    format = request.query_params.get("format", "pt")
    if format not in EXPORT_FORMATS:
        raise UploadError(f"format must be one of {', '.join(EXPORT_FORMATS)}")
    data = await run_in_threadpool(_session(request).export, format)
    return Response(
        data,
        media_type="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="fewsight-classifier.{format}"'},
    )


async def refused(request: Request, error: Exception) -> JSONResponse:
    """Every refusal as JSON {"error": message}: a user's mistake (400s), never a stack trace."""
    status = getattr(error, "status", None) or getattr(error, "status_code", 400)
    message, headers = str(error), None
    if isinstance(error, HTTPException):
        headers, where = error.headers, f"{request.method} {request.url.path}"
        if status == 404:
            message = f"there is no {request.url.path}; the API is described at /openapi.json"
        elif status == 405:
            message = f"{where} is not allowed; use {(headers or {}).get('Allow', 'GET')}"
        else:
            message = f"{where}: {error.detail}"
    return JSONResponse({"error": _one_line(message)}, status_code=status, headers=headers)


async def crashed(request: Request, error: Exception) -> JSONResponse:
    """An unexpected failure, as JSON too (500); uvicorn logs its traceback."""
    message = (
        f"the server failed ({type(error).__name__}: {error}); please report it as a bug of fewsight serve"
    )
    return JSONResponse({"error": _one_line(message)}, status_code=500, headers=SECURITY_HEADERS)


def _one_line(message: str) -> str:
    return " ".join(message.split())


def create_app(session: Session, host: str = "127.0.0.1", allow_hosts: Iterable[str] = ()) -> Starlette:
    """The web application serving `session`, guarded for a server bound to `host` that also
    answers to the host names `allow_hosts`."""
    routes = [
        Route("/", page),
        Route("/openapi.json", openapi),
        Route("/api/model", model),
        Route("/api/classes", classes, methods=["GET"]),
        Route("/api/classes", add_class, methods=["POST"]),
        Route("/api/classes/{name}", remove_class, methods=["DELETE"]),
        Route("/api/classes/{name}/images", add_images, methods=["POST"]),
        Route("/api/classes/{name}/images/{index:int}", class_image),
        Route("/api/adapt", adapt, methods=["POST"]),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/api/predictions", last_predictions),
        Route("/api/predictions/{index:int}", query_image),
        Route("/api/predictions.csv", predictions_csv),
        Route("/api/export", export),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    handlers = {FewsightError: refused, HTTPException: refused, Exception: crashed}
    middleware = guards(host, session.limits, allow_hosts)
    app = Starlette(routes=routes, middleware=middleware, exception_handlers=handlers)
    app.state.session = session
    return app
