"""`kerassave serve` as its users meet it: a subprocess on loopback ports,
asked with plain HTTP (the bodies of TF Serving's REST documentation) and
with tensorflow-serving-api's gRPC stubs, its answers compared with the
model's own."""

from __future__ import annotations

import base64
import json
import os
import shutil
import socket
import time

import grpc
import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    predict_pb2,
    regression_pb2,
)
from tensorflow_serving.config import model_server_config_pb2

from kerassave_callbacks import SavedModelExporter, cli, export_saved_model
from kerassave_callbacks.core import serving_signatures
from kerassave_callbacks.server import config as config_lib
from kerassave_callbacks.server import service

from conftest import classifier
from helpers import ServeProcess, wait_for
from test_signatures import FEATURES, SIGNATURES, mixed_model, mixed_rows, mixed_targets

MAX_BODY = 1_000_000


def _rows(n: int = 3) -> dict:
    rows = mixed_rows(n)
    rows["color"][0, 0] = "blue"
    return rows


def _expected(model, rows) -> dict:
    outputs = model({k: tf.constant(v) for k, v in rows.items()})
    return {k: np.asarray(v) for k, v in outputs.items()}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two versions of the mixed model (dict in and out, a string lookup,
    classify and regress signatures, warm-up requests), the models of each."""
    keras.utils.set_random_seed(3)
    model = mixed_model()
    rows = mixed_rows(8)
    export_dir = str(tmp_path_factory.mktemp("serve") / "exports")
    exporter = SavedModelExporter(
        export_dir,
        signatures=SIGNATURES,
        warmup_inputs={k: v[:2] for k, v in rows.items()},
        export_on_train_end=False,
    )
    models = []
    for _ in range(2):
        model.fit(
            {k: tf.constant(v) for k, v in rows.items()},
            mixed_targets(8),
            verbose=0,
            callbacks=[exporter],
        )
        models.append(keras.models.clone_model(model))
        models[-1].set_weights(model.get_weights())
    exporter.close()
    versions = exporter.versions()
    assert len(versions) == 2
    # The versions answer differently, so an answer names its version.
    first, second = (_expected(m, _rows())["score"] for m in models)
    assert not np.allclose(first, second, atol=1e-4)
    return export_dir, dict(zip(versions, models, strict=True))


@pytest.fixture(scope="module")
def server(exported, tmp_path_factory):
    """One server for the module: "mixed" at every version, labelled."""
    export_dir, models = exported
    old, new = sorted(models)
    config = model_server_config_pb2.ModelServerConfig()
    entry = config.model_config_list.config.add()
    entry.name, entry.base_path = "mixed", export_dir
    entry.model_version_policy.all.SetInParent()
    entry.version_labels["stable"] = old
    entry.version_labels["canary"] = new
    path = tmp_path_factory.mktemp("config") / "models.config"
    path.write_text(str(config))
    started = ServeProcess(
        f"--model_config_file={path}", f"--max_request_bytes={MAX_BODY}"
    )
    yield started
    started.stop()


# REST.


def test_rest_status_lists_every_version_available(server, exported):
    _, models = exported
    old, new = sorted(models)
    status, body = server.get("/v1/models/mixed")
    assert status == 200
    assert body == {
        "model_version_status": [
            {
                "version": str(v),
                "state": "AVAILABLE",
                "status": {"error_code": "OK", "error_message": ""},
            }
            for v in (new, old)
        ]
    }
    assert server.get(f"/v1/models/mixed/versions/{old}")[1]["model_version_status"][0][
        "version"
    ] == str(old)
    assert server.get("/v1/models/mixed/labels/stable")[1]["model_version_status"][0][
        "version"
    ] == str(old)


@pytest.mark.parametrize("where", ["", "/versions/{old}", "/labels/stable"])
def test_rest_predict_rows_answer_as_the_model(server, exported, where):
    _, models = exported
    old, new = sorted(models)
    model = models[old if where else new]
    rows = _rows()
    instances = [
        {
            "measures": rows["measures"][i].tolist(),
            "count": rows["count"][i].tolist(),
            "color": [rows["color"][i, 0]],
        }
        for i in range(3)
    ]
    status, body = server.post(
        f"/v1/models/mixed{where.format(old=old)}:predict", {"instances": instances}
    )
    assert status == 200, body
    expected = _expected(model, rows)
    assert [set(p) for p in body["predictions"]] == [{"label", "score"}] * 3
    for name in ("label", "score"):
        got = np.array([p[name] for p in body["predictions"]])
        np.testing.assert_allclose(got, expected[name], atol=1e-5)


def test_rest_predict_columns_with_b64_strings_answer_as_the_model(server, exported):
    _, models = exported
    rows = _rows()
    inputs = {
        "measures": rows["measures"].tolist(),
        "count": rows["count"].tolist(),
        "color": [
            [{"b64": base64.b64encode(c.encode()).decode()}]
            for c in rows["color"][:, 0]
        ],
    }
    status, body = server.post(
        "/v1/models/mixed:predict",
        {"signature_name": "serving_default", "inputs": inputs},
    )
    assert status == 200, body
    expected = _expected(models[max(models)], rows)
    for name in ("label", "score"):
        np.testing.assert_allclose(body["outputs"][name], expected[name], atol=1e-5)


def _examples(rows) -> list[dict]:
    return [
        {
            "measures": rows["measures"][i].tolist(),
            "count": int(rows["count"][i, 0]),
            "color": rows["color"][i, 0],
        }
        for i in range(len(rows["measures"]))
    ]


def test_rest_classify_and_regress_answer_as_the_model(server, exported):
    _, models = exported
    rows = _rows()
    expected = _expected(models[max(models)], rows)
    status, body = server.post(
        "/v1/models/mixed:classify",
        {"signature_name": "classify", "examples": _examples(rows)},
    )
    assert status == 200, body
    assert [[label for label, _ in row] for row in body["results"]] == [
        ["a", "b", "c"]
    ] * 3
    scores = [[score for _, score in row] for row in body["results"]]
    np.testing.assert_allclose(scores, expected["label"], atol=1e-5)

    # The context's features go into every example.
    examples = _examples(rows)
    for example in examples:
        del example["color"]
    status, body = server.post(
        "/v1/models/mixed:regress",
        {
            "signature_name": "regress",
            "context": {"color": "blue"},
            "examples": examples,
        },
    )
    assert status == 200, body
    blue = dict(rows, color=np.array([["blue"]] * 3, dtype=object))
    expected_blue = _expected(models[max(models)], blue)
    np.testing.assert_allclose(body["results"], expected_blue["score"][:, 0], atol=1e-5)


def test_rest_metadata_holds_the_versions_signatures(server, exported):
    _, models = exported
    status, body = server.get(f"/v1/models/mixed/versions/{min(models)}/metadata")
    assert status == 200
    assert body["model_spec"] == {
        "name": "mixed",
        "version": str(min(models)),
        "signature_name": "",
    }
    defs = body["metadata"]["signature_def"]["signature_def"]
    assert set(defs) == {
        "serving_default",
        "examples",
        "classify",
        "regress",
        "__saved_model_init_op",
    }
    assert defs["classify"]["method_name"] == "tensorflow/serving/classify"
    assert defs["serving_default"]["inputs"]["color"]["dtype"] == "DT_STRING"


@pytest.mark.parametrize(
    "path, body, status, fragment",
    [
        ("/v1/models/mixed:predict", b"{not json", 400, "JSON Parse error"),
        ("/v1/models/mixed:predict", [1, 2], 400, "must be a JSON object"),
        ("/v1/models/mixed:predict", {"instances": [], "inputs": {}}, 400, "Not both"),
        (
            "/v1/models/mixed:predict",
            {"rows": []},
            400,
            "Missing 'inputs' or 'instances'",
        ),
        (
            "/v1/models/mixed:predict",
            {"instances": [1.0]},
            400,
            "give an object of input name",
        ),
        (
            "/v1/models/mixed:predict",
            {"inputs": {"measures": [[1.0]]}},
            400,
            "missing ['color', 'count']",
        ),
        (
            "/v1/models/mixed:predict",
            {
                "inputs": {
                    "measures": [[1.0, 2.0, 3.0], [1.0]],
                    "count": [[1]],
                    "color": [["red"]],
                }
            },
            400,
            "Input 'measures' is ragged",
        ),
        (
            "/v1/models/mixed:predict",
            {
                "inputs": {
                    "measures": [[1.0, 2.0, 3.0]],
                    "count": [[1.5]],
                    "color": [["red"]],
                }
            },
            400,
            "1.5 would lose precision",
        ),
        (
            "/v1/models/mixed:predict",
            {"signature_name": "nope", "instances": [1.0]},
            400,
            'Serving signature key "nope" not found',
        ),
        (
            "/v1/models/nope:predict",
            {"instances": [1.0]},
            404,
            "Servable not found for request: Latest(nope)",
        ),
        (
            "/v1/models/mixed/versions/7:predict",
            {"instances": [1.0]},
            404,
            "Specific(mixed, 7)",
        ),
        (
            "/v1/models/mixed/labels/nope:predict",
            {"instances": [1.0]},
            400,
            "Unrecognized servable version label: nope",
        ),
        ("/v1/models/mixed:classify", {"examples": []}, 400, "non-empty list"),
        (
            "/v1/models/mixed:classify",
            {"signature_name": "classify", "examples": [{"count": [1, "a"]}]},
            400,
            "numbers or strings",
        ),
        ("/v1/models/mixed:explain", {}, 404, "Malformed request: POST"),
    ],
    ids=lambda v: v if isinstance(v, str) and not v.startswith("/") else None,
)
def test_rest_bad_requests_get_tf_servings_status_and_a_clear_error(
    server, path, body, status, fragment
):
    got, reply = server.post(path, body)
    assert (got, list(reply)) == (status, ["error"])
    assert fragment in reply["error"]


def test_rest_a_body_over_the_limit_is_refused_before_it_is_read(server):
    host, port = server.rest.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(
            b"POST /v1/models/mixed:predict HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {MAX_BODY + 1}\r\n\r\n".encode()
        )
        reply = conn.makefile("rb").read()
    head, body = reply.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 413")
    assert f"more than the {MAX_BODY}" in json.loads(body)["error"]


# gRPC.


def _tensor_inputs(request, rows) -> None:
    for key, value in rows.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(value))


def test_grpc_predict_answers_as_the_model_and_names_the_version(server, exported):
    _, models = exported
    rows = _rows()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mixed"
    _tensor_inputs(request, rows)
    request.output_filter.append("score")
    reply = server.predictions.Predict(request, 30)
    assert (reply.model_spec.name, reply.model_spec.version.value) == (
        "mixed",
        max(models),
    )
    assert reply.model_spec.signature_name == "serving_default"
    assert list(reply.outputs) == ["score"]
    np.testing.assert_allclose(
        tf.make_ndarray(reply.outputs["score"]),
        _expected(models[max(models)], rows)["score"],
        atol=1e-5,
    )

    request.model_spec.version_label = "stable"
    assert server.predictions.Predict(request, 30).model_spec.version.value == min(
        models
    )


def _examples_input(request_input, rows) -> None:
    for i in range(len(rows["measures"])):
        example = serving_signatures.to_example(
            {k: v[i] for k, v in rows.items()}, FEATURES
        )
        request_input.example_list.examples.add().ParseFromString(example)


def test_grpc_classify_regress_and_multi_inference(server, exported):
    _, models = exported
    rows = _rows()
    expected = _expected(models[max(models)], rows)

    classify = classification_pb2.ClassificationRequest()
    classify.model_spec.name, classify.model_spec.signature_name = "mixed", "classify"
    _examples_input(classify.input, rows)
    reply = server.predictions.Classify(classify, 30)
    scores = [[c.score for c in row.classes] for row in reply.result.classifications]
    np.testing.assert_allclose(scores, expected["label"], atol=1e-5)
    assert [c.label for c in reply.result.classifications[0].classes] == ["a", "b", "c"]

    regress = regression_pb2.RegressionRequest()
    regress.model_spec.name, regress.model_spec.signature_name = "mixed", "regress"
    _examples_input(regress.input, rows)
    values = [
        r.value for r in server.predictions.Regress(regress, 30).result.regressions
    ]
    np.testing.assert_allclose(values, expected["score"][:, 0], atol=1e-5)

    multi = inference_pb2.MultiInferenceRequest()
    for key, method in (
        ("classify", "tensorflow/serving/classify"),
        ("regress", "tensorflow/serving/regress"),
    ):
        task = multi.tasks.add()
        task.model_spec.name, task.model_spec.signature_name = "mixed", key
        task.method_name = method
    _examples_input(multi.input, rows)
    results = server.predictions.MultiInference(multi, 30).results
    assert [r.model_spec.signature_name for r in results] == ["classify", "regress"]
    assert results[0].classification_result == reply.result
    assert [r.value for r in results[1].regression_result.regressions] == values


def test_grpc_metadata_and_status(server, exported):
    _, models = exported
    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = "mixed"
    request.metadata_field.append("signature_def")
    reply = server.predictions.GetModelMetadata(request, 30)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    reply.metadata["signature_def"].Unpack(signature_map)
    assert reply.model_spec.version.value == max(models)
    assert (
        signature_map.signature_def["regress"].method_name
        == "tensorflow/serving/regress"
    )

    status = get_model_status_pb2.GetModelStatusRequest()
    status.model_spec.name = "mixed"
    status.model_spec.version_label = "canary"
    (row,) = server.models.GetModelStatus(status, 30).model_version_status
    assert (row.version, row.state) == (
        max(models),
        get_model_status_pb2.ModelVersionStatus.AVAILABLE,
    )


@pytest.mark.parametrize(
    "change, code, fragment",
    [
        (
            lambda r: setattr(r.model_spec, "name", "nope"),
            grpc.StatusCode.NOT_FOUND,
            "Latest(nope)",
        ),
        (
            lambda r: setattr(r.model_spec, "signature_name", "nope"),
            grpc.StatusCode.FAILED_PRECONDITION,
            '"nope" not found',
        ),
        (
            lambda r: r.inputs["extra"].CopyFrom(tf.make_tensor_proto([1.0])),
            grpc.StatusCode.INVALID_ARGUMENT,
            "alias not found in signature: extra",
        ),
        (
            lambda r: r.inputs["measures"].CopyFrom(
                tf.make_tensor_proto(np.ones([3, 2], "float32"))
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "Cannot feed value of shape (3, 2)",
        ),
    ],
    ids=["unknown model", "unknown signature", "unknown input", "wrong shape"],
)
def test_grpc_errors_carry_tf_servings_codes(server, change, code, fragment):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "mixed"
    _tensor_inputs(request, _rows())
    change(request)
    with pytest.raises(grpc.RpcError) as raised:
        server.predictions.Predict(request, 30)
    assert raised.value.code() == code
    assert fragment in raised.value.details()


# Following a directory (serving while fit exports: test_live_serving).


def test_a_new_version_whose_warmup_fails_is_not_served(exported, tmp_path):
    export_dir, models = exported
    good, bad = max(models), max(models) + 10
    shutil.copytree(os.path.join(export_dir, str(good)), tmp_path / str(good))
    served = ServeProcess(str(tmp_path), "--model_name=mixed")
    try:
        shutil.copytree(os.path.join(export_dir, str(good)), tmp_path / "staged")
        _break_warmup(tmp_path / "staged")
        os.rename(tmp_path / "staged", tmp_path / str(bad))
        wait_for(
            lambda: _states(served) == [(str(bad), "END"), (str(good), "AVAILABLE")]
        )
        status = served.get("/v1/models/mixed")[1]["model_version_status"]
        inputs = {k: v.tolist() for k, v in _rows().items()}
        reply = served.post("/v1/models/mixed:predict", {"inputs": inputs})
    finally:
        served.stop()

    assert status[0]["status"]["error_code"] == "INVALID_ARGUMENT"
    assert "warm-up record 0 (predict_log)" in status[0]["status"]["error_message"]
    assert reply[0] == 200


def test_a_config_file_read_again_changes_what_is_served(exported, tmp_path):
    """--model_config_file_poll_wait_seconds: labels and policies move, a
    model comes and goes, and a file that does not parse changes nothing."""
    export_dir, models = exported
    old, new = sorted(models)
    path = tmp_path / "models.config"
    _write_config(path, {"mixed": (export_dir, [old], {"stable": old})})
    served = ServeProcess(
        f"--model_config_file={path}", "--model_config_file_poll_wait_seconds=0.2"
    )
    try:
        started = _states(served)
        _write_config(path, "model_config_list { config { name: ")
        time.sleep(1.5)  # Several reads of the broken file.
        kept = _states(served), _labelled(served, "stable")
        _write_config(
            path,
            {
                "mixed": (export_dir, None, {"stable": new, "canary": old}),
                "again": (export_dir, [new], {}),
            },
        )
        wait_for(lambda: _labelled(served, "stable") == str(new))
        wait_for(lambda: _states(served, "again") == [(str(new), "AVAILABLE")])
        both = _states(served)
        canary = _labelled(served, "canary")
        _write_config(path, {"again": (export_dir, [new], {})})
        wait_for(lambda: served.get("/v1/models/mixed")[0] == 404)
        still = _states(served, "again")
    finally:
        served.stop()

    assert started == [(str(old), "AVAILABLE")]
    assert kept == (started, str(old))
    assert both == [(str(new), "AVAILABLE"), (str(old), "AVAILABLE")]
    assert canary == str(old)
    assert still == [(str(new), "AVAILABLE")]


def _write_config(path, models) -> None:
    """A ModelServerConfig naming `models` (name -> (base path, versions
    or None for all, labels)), or text as it is; replaced at once."""
    if isinstance(models, str):
        text = models
    else:
        config = model_server_config_pb2.ModelServerConfig()
        for name, (base, versions, labels) in models.items():
            entry = config.model_config_list.config.add()
            entry.name, entry.base_path = name, base
            if versions is None:
                entry.model_version_policy.all.SetInParent()
            else:
                entry.model_version_policy.specific.versions.extend(versions)
            entry.version_labels.update(labels)
        text = str(config)
    staged = f"{path}.staged"
    with open(staged, "w") as f:
        f.write(text)
    os.replace(staged, path)


def _labelled(served, label: str) -> str | None:
    code, body = served.get(f"/v1/models/mixed/labels/{label}")
    return body["model_version_status"][0]["version"] if code == 200 else None


def _states(served, model: str = "mixed") -> list[tuple[str, str]]:
    rows = served.get(f"/v1/models/{model}")[1].get("model_version_status", [])
    return [(row["version"], row["state"]) for row in rows]


def _break_warmup(version_dir) -> None:
    """Rewrites the warm-up requests with an input the signature lacks."""
    from tensorflow_serving.apis import prediction_log_pb2

    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.name = "mixed"
    log.predict_log.request.inputs["pixels"].CopyFrom(tf.make_tensor_proto([1.0]))
    path = version_dir / "assets.extra" / "tf_serving_warmup_requests"
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(log.SerializeToString())


# The command line and the config.


@pytest.mark.parametrize(
    "args, fragment",
    [
        ([], "give EXPORT_DIR or --model_config_file"),
        (["d", "--version_policy=specific"], "needs the versions to serve"),
        (["d", "--model_name=a/b"], "Invalid model name 'a/b'"),
        (["d", "--rest_api_num_threads=0"], "rest_threads"),
    ],
)
def test_bad_serve_flags_exit_2_naming_the_problem(args, fragment, capsys):
    assert cli.main(["serve", *args]) == cli.USAGE
    assert fragment in capsys.readouterr().err


def test_a_taken_port_exits_2_naming_it(exported, capsys):
    export_dir, _ = exported
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = cli.main(["serve", export_dir, "--port=0", f"--rest_api_port={port}"])
    assert code == cli.USAGE
    assert "cannot serve: [Errno 98] Address already in use" in capsys.readouterr().err


@pytest.mark.parametrize(
    "policy, aspired",
    [
        (config_lib.VersionPolicy(), [9]),
        (config_lib.VersionPolicy("latest", num_versions=2), [5, 9]),
        (config_lib.VersionPolicy("all"), [3, 5, 9]),
        (config_lib.VersionPolicy("specific", versions=(3, 4)), [3]),
    ],
    ids=["latest", "latest 2", "all", "specific"],
)
def test_version_policies_pick_what_tf_serving_picks(policy, aspired):
    assert policy.aspired([9, 3, 5]) == aspired


def test_the_config_serving_config_prints_is_read_back(exported, tmp_path, capsys):
    export_dir, models = exported
    assert (
        cli.main(["serving_config", export_dir, "--name", "m", "--policy", "all"]) == 0
    )
    path = tmp_path / "m.config"
    path.write_text(capsys.readouterr().out)
    (config,) = config_lib.read_config_file(str(path))
    assert (config.name, config.base_path, config.policy.kind) == (
        "m",
        export_dir,
        "all",
    )


def test_a_directory_on_tfs_file_systems_is_served(tmp_path):
    """The server lists and loads through tf.io.gfile: a ram:// directory
    (in this process, where that file system lives)."""
    model = classifier()
    export_saved_model(model, "ram://served/digits/7")
    server = service.ModelServer(
        [config_lib.ModelConfig("digits", "ram://served/digits")]
    )
    try:
        server.poll()
        request = predict_pb2.PredictRequest()
        request.model_spec.name = "digits"
        rows = np.ones([2, 4], "float32")
        request.inputs["features"].CopyFrom(tf.make_tensor_proto(rows))
        reply = server.predict(request)
    finally:
        server.close()
    assert reply.model_spec.version.value == 7
    (output,) = reply.outputs.values()
    np.testing.assert_allclose(tf.make_ndarray(output), model(rows), atol=1e-5)
