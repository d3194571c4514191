"""Reads what TrainingProbes wrote, with PyTorch and numpy only, and recomputes what it published.

Usage: python3 pytorch_interop.py MANIFEST.json

The manifest (written by PyTorchInteropTests) names a .pt and a .safetensors checkpoint of a small network, the
network's layer sizes, an input batch with the outputs the C# model gave for it in eval mode, and exported gradient
windows, each with the parameters and the batch of the step that closed it and the euclidean indicators the library
published for it.

This script
  1. builds the same architecture in PyTorch and loads the .pt with torch.load (also with weights_only=True, the
     default of PyTorch 2.6 and later) and load_state_dict(strict=True), then the .safetensors file the same way;
  2. runs both loaded networks on the input and compares with the C# outputs;
  3. for each window: reads it with its own safetensors reader (no safetensors package needed), computes the K
     micro-batch gradients itself (the mean cross-entropy of each of K equal slices of the closing step's batch, at
     that step's parameters, in training mode) and compares them with the exported ones, then recomputes the
     indicators with numpy in float64 from their definitions at the trainer's batch (K micro-batches) and compares
     them with the published values.

It prints one JSON object with every recomputed number and the worst differences, and exits 1 if any check fails.
"""
import json
import struct
import sys

import numpy as np
import torch

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
          "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def read_safetensors(path):
    """Tensors (as numpy arrays) and metadata of a safetensors file, read from the format's definition."""
    with open(path, "rb") as f:
        data = f.read()
    (header_length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_length].decode("utf-8"))
    metadata = header.pop("__metadata__", {})
    body = data[8 + header_length:]
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        array = np.frombuffer(body[begin:end], dtype=np.dtype(DTYPES[entry["dtype"]]).newbyteorder("<"))
        tensors[name] = array.reshape(entry["shape"]).copy()
    return tensors, metadata


def build_model(sizes, dtype, architecture="bn"):
    """The C# test's architectures as nn.Sequential: Linear, BatchNorm1d, ReLU, Linear ("bn"), or without the
    BatchNorm ("plain")."""
    inputs, hidden, outputs = sizes
    layers = [torch.nn.Linear(inputs, hidden)]
    if architecture == "bn":
        layers.append(torch.nn.BatchNorm1d(hidden))
    layers += [torch.nn.ReLU(), torch.nn.Linear(hidden, outputs)]
    return torch.nn.Sequential(*layers).to(dtype)


def micro_batch_gradients(model, x, y, k):
    """The K gradients of the mean cross-entropy of K equal consecutive slices of the batch (the first K*floor(b/K)
    rows), by parameter name, stacked as [K, ...shape]."""
    size = x.shape[0] // k
    rows = {name: [] for name, _ in model.named_parameters()}
    for i in range(k):
        model.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[i * size:(i + 1) * size]), y[i * size:(i + 1) * size])
        loss.backward()
        for name, parameter in model.named_parameters():
            rows[name].append(parameter.grad.detach().clone())
    return {name: torch.stack(values).numpy() for name, values in rows.items()}


def first_order(window):
    """The default euclidean indicators of K micro-batch gradients (rows), in float64, at the trainer's batch (K
    micro-batches): S = mean off-diagonal Gram entry (unbiased |E g_b|^2), T = mean diagonal - S (the trace of one
    micro-batch gradient's covariance), T_b = T / K, A^2 = S + T_b (E |g_b|^2)."""
    g = np.concatenate([t.reshape(t.shape[0], -1).astype(np.float64) for t in window], axis=1)
    k = g.shape[0]
    gram = g @ g.T
    off = ~np.eye(k, dtype=bool)
    s = gram[off].mean()
    d = np.diag(gram).mean()
    tb = max(d - s, 0.0) / k
    a2 = s + tb
    mean_gradient = g.mean(axis=0)
    return {
        "cosine": float(s / a2),
        "relative_regret": float(tb / a2),
        "contrastive_flatness": float(np.sqrt(a2 / s)) if s > 0 else float("inf"),
        "noise": float(tb),
        "coherence": float(k * (mean_gradient @ mean_gradient) / d),
    }


def main(manifest_path):
    with open(manifest_path) as f:
        manifest = json.load(f)
    failures = []
    report = {"torch": torch.__version__, "numpy": np.__version__}

    dtype = getattr(torch, manifest["dtype"])
    x = torch.tensor(manifest["input"], dtype=dtype)
    expected_output = np.array(manifest["output"], dtype=np.float64)
    output_tolerance = manifest["output_tolerance"]

    # 1. The .pt checkpoint, through torch.load and a strict load_state_dict.
    for weights_only in (False, True):
        state = torch.load(manifest["pt"], map_location="cpu", weights_only=weights_only)
        model = build_model(manifest["sizes"], dtype)
        model.load_state_dict(state, strict=True)
        for name, tensor in state.items():
            if tensor.dtype != dtype and tensor.is_floating_point():
                failures.append(f".pt: {name} is {tensor.dtype}, expected {dtype}")
        model.eval()
        with torch.no_grad():
            diff = float(np.abs(model(x).double().numpy() - expected_output).max())
        report[f"pt_output_max_abs_diff_weights_only_{weights_only}"] = diff
        if not diff <= output_tolerance:
            failures.append(f".pt (weights_only={weights_only}): outputs differ from C# by {diff}")
        for name, tensor in state.items():
            if tensor.requires_grad:
                failures.append(f".pt: {name} requires grad; a state_dict holds detached tensors")

    # 2. The .safetensors checkpoint, read here and loaded strictly into the same architecture.
    tensors, metadata = read_safetensors(manifest["safetensors"])
    report["safetensors_metadata"] = metadata
    model = build_model(manifest["sizes"], dtype)
    model.load_state_dict({name: torch.from_numpy(array) for name, array in tensors.items()}, strict=True)
    model.eval()
    with torch.no_grad():
        diff = float(np.abs(model(x).double().numpy() - expected_output).max())
    report["safetensors_output_max_abs_diff"] = diff
    if not diff <= output_tolerance:
        failures.append(f".safetensors: outputs differ from C# by {diff}")
    if metadata.get("format") != "pt":
        failures.append(f".safetensors: metadata format is {metadata.get('format')!r}, expected 'pt'")

    # 3. The exported gradient windows, the gradients PyTorch computes for them, and the values published.
    report["windows"] = []
    for entry in manifest["windows"]:
        architecture = entry["architecture"]
        window, window_metadata = read_safetensors(entry["window"])
        k = int(window_metadata["k"])
        result = {"architecture": architecture, "metadata": window_metadata}
        for name, array in window.items():
            if array.shape[0] != k:
                failures.append(f"{architecture}: {name} has leading dimension {array.shape[0]}, expected K = {k}")

        theta, _ = read_safetensors(entry["theta"])
        batch, _ = read_safetensors(entry["batch"])
        model = build_model(manifest["sizes"], dtype, architecture)
        model.load_state_dict({name: torch.from_numpy(array) for name, array in theta.items()}, strict=True)
        model.train()
        ours = micro_batch_gradients(model, torch.from_numpy(batch["x"]), torch.from_numpy(batch["y"]), k)
        if sorted(ours) != sorted(window):
            failures.append(f"{architecture}: exported parameters {sorted(window)}, the model's {sorted(ours)}")
        # Relative to the window's largest gradient entry: the bias before a BatchNorm has a gradient of rounding size.
        scale = max(max(float(np.abs(array).max()) for array in ours.values()), 1e-12)
        differences = {name: float(np.abs(ours[name].astype(np.float64) - window[name]).max()) / scale
                       for name in ours if name in window}
        result["gradient_differences"] = differences
        worst = max(differences.values(), default=float("inf"))
        result["gradient_relative_difference"] = worst
        if not worst <= manifest["gradient_tolerance"]:
            failures.append(f"{architecture}: exported micro-batch gradients differ from PyTorch's by {worst} (relative)")

        recomputed = first_order([window[name] for name in sorted(window)])
        result["recomputed"] = recomputed
        result["published"] = entry["published"]
        differences = {}
        for name, value in recomputed.items():
            published = entry["published"][name]
            differences[name] = abs(value - published) / max(1.0, abs(value))
            if not differences[name] <= manifest["tolerance"]:
                failures.append(f"{architecture}: {name} recomputed {value!r}, published {published!r}")
        result["relative_differences"] = differences
        report["windows"].append(result)

    report["failures"] = failures
    print(json.dumps(report, indent=2, default=str))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
