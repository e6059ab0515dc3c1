"""grpc.aio server: the ecgregen.v1 service (service.py) and its start-up and shutdown (app.py)."""
