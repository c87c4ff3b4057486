"""`kerassave serve`: TF Serving's REST and gRPC APIs over export
directories, for development and CI (production uses TF Serving).

    config.py     models, version policies, labels (flags or a config file)
    models.py     ServedModel: follows a directory, loads, unloads, resolves
    service.py    ModelServer: TF Serving's requests, protos in and out
    rest_json.py  the REST API's JSON <-> those protos
    rest.py       the HTTP server (a thread pool, bounded bodies)
    grpc_api.py   PredictionService and ModelService over gRPC
    app.py        ServeOptions, Serving: both servers over the models
    command.py    the `serve` subcommand: flags -> configs -> Serving, until stopped
"""
