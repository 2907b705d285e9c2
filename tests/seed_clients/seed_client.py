"""The seed's demo clients, in Python, on stubs generated from the seed's own protos.

Run as ``python seed_client.py STUBS_DIR HOST:PORT``: it calls the four methods of
``com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService`` with requests built as
the seed's Java clients build them (``DLPredictOnline/demo/.../client/*.java``), reads the
answers as they read them, and prints one JSON object: method -> what it read, or
``{"error": "CODE: details"}``.

It runs in a process of its own: the stubs register protobuf full names
(``tensorflow.serving.PredictRequest``, ``inference.ModelInferRequest``, ...) that
``tensorflow_serving.apis`` and ``tritonclient`` register too, so they cannot share one
process with those. The request data (:func:`census_rows`, :func:`digit_png`,
:func:`photo_jpeg`, :func:`tis_image`) needs no stubs, so a test can import this file to
compute the answers it expects.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import sys
from typing import Any

import numpy as np

SERVICE = "com.bj58.ailab.dlpredictonline.grpc.WpaiDLPredictOnlineService"
# Common.TASK_ID_KEY of the seed's Java code.
TASK_ID_KEY = "taskId"
# Task ids and model names as the seed's demo clients use them (<name>-<taskid>).
WIDE_AND_DEEP = "wideAndDeep-2390"
TEXT_CNN = "textcnn-69"
TEXT_CNN_SENTENCE = "不用了谢谢"
SEQ_LEN = 72
MNIST_TASK = 39
MMOE_TASK = 38
CAFFE_TASK = 89
TIS_MODEL = "tensorflow-888"
TIS_INPUT = "input_1:0"
TIS_OUTPUT = "dense_1/Softmax:0"
TIS_SHAPE = (1, 8, 8, 3)
MMOE_FEATURES = 8
DEADLINE_S = 10.0  # withDeadlineAfter(10000, MILLISECONDS)

# (kind, name) of each census column, as TensorflowWideAndDeep.java builds its features.
CENSUS_COLUMNS = [
    ("float", "age"),
    ("bytes", "workclass"),
    ("float", "fnlwgt"),
    ("bytes", "education"),
    ("float", "education_num"),
    ("bytes", "marital_status"),
    ("bytes", "occupation"),
    ("bytes", "relationship"),
    ("bytes", "race"),
    ("bytes", "gender"),
    ("float", "capital_gain"),
    ("float", "capital_loss"),
    ("float", "hours_per_week"),
    ("bytes", "native_country"),
]


def census_rows() -> list[str]:
    """Two made-up census lines (the seed's client reads them from census_input.csv)."""
    return [
        "39,State-gov,77516,Bachelors,13,Never-married,Adm-clerical,Not-in-family,White,"
        "Male,2174,0,40,United-States",
        "52,Self-emp-not-inc,209642,HS-grad,9,Married-civ-spouse,Exec-managerial,Husband,"
        "White,Male,0,0,45,United-States",
    ]


def _image(mode: str, size: tuple[int, int], seed: int) -> Any:
    from PIL import Image

    rng = np.random.default_rng(seed)
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    return Image.fromarray(pixels if channels == 3 else pixels[:, :, 0], mode)


def digit_png() -> bytes:
    """A 28x28 grey PNG: what PyTorchMnist.java sends as binData (an image file's bytes)."""
    out = io.BytesIO()
    _image("L", (28, 28), 7).save(out, format="PNG")
    return out.getvalue()


def photo_jpeg() -> bytes:
    """A small RGB JPEG: CaffeClient.java sends an image file's bytes, base64, as strData."""
    out = io.BytesIO()
    _image("RGB", (16, 12), 8).save(out, format="JPEG", quality=95)
    return out.getvalue()


def text_cnn_words() -> list[str]:
    """TensorflowTextCnn.java's tokens: the sentence's characters, <eos>, then <pad>s."""
    words = list(TEXT_CNN_SENTENCE)
    return words + ["<eos>"] + ["<pad>"] * (SEQ_LEN - len(words) - 1)


def tis_image() -> np.ndarray:
    """The FP32 NHWC image TisClient.java sends in contents.fp32_contents."""
    rng = np.random.default_rng(9)
    return rng.random(TIS_SHAPE, dtype=np.float32)


def mmoe_features() -> list[float]:
    """The normalised feature row PyTorchMmoe.java sends in data.tensor."""
    return [round(0.1 * i, 3) for i in range(MMOE_FEATURES)]


# -- the clients ---------------------------------------------------------------------------


def wide_and_deep(stubs: Any, stub: Any) -> dict[str, Any]:
    """TensorflowWideAndDeep.java: tf.Example strings in, ``scores`` float_val pairs out."""
    example_pb2, predict_pb2, tensor_pb2, types_pb2 = (
        stubs["example"],
        stubs["predict"],
        stubs["tensor"],
        stubs["types"],
    )
    examples = []
    for row in census_rows():
        values = row.split(",")
        example = example_pb2.Example()
        for (kind, name), value in zip(CENSUS_COLUMNS, values, strict=True):
            feature = example.features.feature[name]
            if kind == "float":
                feature.float_list.value.append(float(value))
            else:
                feature.bytes_list.value.append(value.encode())
        examples.append(example.SerializeToString())
    proto = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=examples)
    proto.tensor_shape.dim.add(size=len(examples))
    request = predict_pb2.PredictRequest()
    request.model_spec.name = WIDE_AND_DEEP
    request.model_spec.signature_name = "serving_default"
    request.inputs["inputs"].CopyFrom(proto)
    response = stub.Predict(request, timeout=DEADLINE_S)
    scores = response.outputs["scores"]
    values = list(scores.float_val)  # getFloatValList(), read two at a time
    classes = response.outputs["classes"]
    return {
        "model_spec": response.model_spec.name,
        "scores": [values[i : i + 2] for i in range(0, len(values), 2)],
        "scores_tensor_content": len(scores.tensor_content),
        "classes": list(classes.int_val),
        "classes_tensor_content": len(classes.tensor_content),
        "example_sizes": [len(e) for e in examples],
    }


def text_cnn(stubs: Any, stub: Any) -> dict[str, Any]:
    """TensorflowTextCnn.java: DT_STRING sentence and label, signature ``prediction``;
    reads ``output`` string_val and ``score`` float_val."""
    predict_pb2, tensor_pb2, types_pb2 = stubs["predict"], stubs["tensor"], stubs["types"]
    sentence = tensor_pb2.TensorProto(
        dtype=types_pb2.DT_STRING, string_val=[w.encode() for w in text_cnn_words()]
    )
    sentence.tensor_shape.dim.add(size=1)
    sentence.tensor_shape.dim.add(size=SEQ_LEN)
    label = tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, string_val=[b"__label__unknown"])
    label.tensor_shape.dim.add(size=1)
    request = predict_pb2.PredictRequest()
    request.model_spec.name = TEXT_CNN
    request.model_spec.signature_name = "prediction"
    request.inputs["sentence"].CopyFrom(sentence)
    request.inputs["label"].CopyFrom(label)
    response = stub.Predict(request, timeout=DEADLINE_S)
    outputs = response.outputs
    if "output" not in outputs or "score" not in outputs:
        return {"keys": sorted(outputs)}  # "response not containsKey output and score"
    labels = [b.decode("utf-8") for b in outputs["output"].string_val]
    scores = list(outputs["score"].float_val)
    return {"keys": sorted(outputs), "pairs": [[k, scores[i]] for i, k in enumerate(labels)]}


def seldon_request(stubs: Any, task_id: int) -> Any:
    message = stubs["prediction"].SeldonMessage()
    message.meta.tags[TASK_ID_KEY].number_value = task_id  # Value.setNumberValue(39)
    return message


def pytorch_mnist(stubs: Any, stub: Any) -> dict[str, Any]:
    """PyTorchMnist.java: binData image, tags taskId; reads data.tensor.values."""
    request = seldon_request(stubs, MNIST_TASK)
    request.binData = digit_png()
    response = stub.PytorchPredict(request, timeout=DEADLINE_S)
    return {
        "values": list(response.data.tensor.values),
        "shape": list(response.data.tensor.shape),
    }


def pytorch_mmoe(stubs: Any, stub: Any) -> dict[str, Any]:
    """PyTorchMmoe.java: data.tensor [1, features], tags taskId; prints the reply."""
    request = seldon_request(stubs, MMOE_TASK)
    request.data.tensor.shape.extend([1, MMOE_FEATURES])
    request.data.tensor.values.extend(mmoe_features())
    response = stub.PytorchPredict(request, timeout=DEADLINE_S)
    return {
        "values": list(response.data.tensor.values),
        "shape": list(response.data.tensor.shape),
        "tags": {k: v.number_value for k, v in response.meta.tags.items()},
    }


def caffe(stubs: Any, stub: Any) -> dict[str, Any]:
    """CaffeClient.java: a base64 image as strData, tags taskId; prints response.getData()."""
    request = seldon_request(stubs, CAFFE_TASK)
    request.strData = base64.b64encode(photo_jpeg()).decode()
    response = stub.CaffePredict(request, timeout=DEADLINE_S)
    data = response.data
    return {
        "has_data": response.HasField("data"),
        "kind": data.WhichOneof("data_oneof"),
        "values": list(data.tensor.values),
        "shape": list(data.tensor.shape),
    }


def tis(stubs: Any, stub: Any) -> dict[str, Any]:
    """TisClient.java: FP32 contents, no requested outputs; reads raw_output_contents."""
    inference = stubs["inference"]
    request = inference.ModelInferRequest(model_name=TIS_MODEL, model_version="1", id="1")
    tensor = request.inputs.add(name=TIS_INPUT, datatype="FP32", shape=list(TIS_SHAPE))
    tensor.contents.fp32_contents.extend(tis_image().reshape(-1).tolist())
    response = stub.TisPredict(request, timeout=DEADLINE_S)
    probabilities: list[float] | None = None
    outputs = []
    for i, output in enumerate(response.outputs):
        raw = response.raw_output_contents[i]  # getRawOutputContentsList().get(i)
        outputs.append(
            {"name": output.name, "datatype": output.datatype, "shape": list(output.shape)}
        )
        if output.name.lower() == TIS_OUTPUT.lower():
            if not raw or len(raw) % 4:
                raise ValueError("output data exception")  # rawContent2FloatList's check
            # byte2float: four bytes, lowest first (little-endian), as float bits.
            probabilities = [struct.unpack_from("<f", raw, j)[0] for j in range(0, len(raw), 4)]
    return {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "id": response.id,
        "outputs": outputs,
        "top5": (probabilities or [])[:5],
        "probabilities": probabilities,
    }


CLIENTS = {
    "Predict": wide_and_deep,
    "Predict/textcnn": text_cnn,
    "PytorchPredict": pytorch_mnist,
    "PytorchPredict/mmoe": pytorch_mmoe,
    "CaffePredict": caffe,
    "TisPredict": tis,
}


def load_stubs(folder: str) -> dict[str, Any]:
    """Import the generated modules from ``folder`` (first on sys.path, so its ``tensorflow``
    and ``tensorflow_serving`` packages are found before any installed ones)."""
    import importlib

    sys.path.insert(0, folder)
    names = {
        "example": "tensorflow.core.example.example_pb2",
        "tensor": "tensorflow.core.framework.tensor_pb2",
        "types": "tensorflow.core.framework.types_pb2",
        "predict": "tensorflow_serving.apis.predict_pb2",
        "prediction": "prediction_pb2",
        "inference": "grpc_service_pb2",
        "wpai_grpc": "wpai_pb2_grpc",
    }
    stubs = {key: importlib.import_module(name) for key, name in names.items()}
    for module in stubs.values():
        if not str(module.__file__).startswith(folder):
            raise RuntimeError(f"{module.__name__} came from {module.__file__}, not {folder}")
    return stubs


def main(folder: str, target: str) -> None:
    import grpc

    stubs = load_stubs(folder)
    results: dict[str, Any] = {}
    # WpaiClient.java: a plain channel, 10 MiB inbound messages.
    options = [("grpc.max_receive_message_length", 10485760)]
    with grpc.insecure_channel(target, options=options) as channel:
        stub = stubs["wpai_grpc"].WpaiDLPredictOnlineServiceStub(channel)
        for method, client in CLIENTS.items():
            try:
                results[method] = client(stubs, stub)
            except grpc.RpcError as exc:
                results[method] = {"error": f"{exc.code().name}: {exc.details()}"}
    print(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
