"""The ceiling for `bench.webhooks`: a FastAPI endpoint that reads the body and answers 202,
served by the same uvicorn, with the same flags, as the API."""

from __future__ import annotations

from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.post("/bare", status_code=202)
async def bare(request: Request) -> Response:
    await request.body()
    return Response(status_code=202)
