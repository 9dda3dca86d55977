"""`s2rt serve`, the on-device daemon, and `s2rt client`.

The daemon (FastAPI on uvicorn, the `serve` extra) is imported only when it runs:
`s2rt train`, `eval`, `predict` and `client` never import FastAPI.
"""
