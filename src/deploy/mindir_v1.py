"""Rewrite a MindSpore 2.x MINDIR into the version-1 layout that MindSpore Lite 2.0 loads.

``mindspore.export`` (2.10) writes ``mind_ir_version`` 3: most operators are ``PrimitiveFunction``
nodes whose settings (axis, kernel size, epsilon, ...) arrive as constant inputs. The Lite 2.0.0
runtime used by ``ascend310_infer`` only reads version 1, where a primitive carries its settings as
attributes. This module folds those constant inputs back into attributes, one primitive per node,
and maps the operators Lite 2.0 does not know onto ones it does (``ResizeBilinearV2`` -> ``Resize``,
``PadV3``/``MirrorPad`` -> ``Pad``). It covers the operators of the PatchCore backbones and patch
aggregation; any other operator is an error naming it, never silently dropped (Lite itself may drop
an operator it does not know, so an unknown one must stop the conversion here).

Usage: ``python -m src.deploy.mindir_v1 IN.mindir OUT.mindir``
"""
import argparse
import os
import sys

import numpy as np

from src.utils.errors import InputError
from src.utils.io import atomic_path

# Enumerations shared by MindSpore 2.x and Lite 2.0 (mindapi/base/types.h, format.h).
_FORMAT_NAMES = {0: "NCHW", 1: "NHWC"}
_PAD_MODE_NAMES = {1: "SAME", 2: "VALID"}  # 0 (PAD) carries explicit pads the pooling ops here never have
_RESIZE_LINEAR = 0
_COORD_ASYMMETRIC, _COORD_ALIGN_CORNERS, _COORD_HALF_PIXEL = 0, 1, 2
_PADDING_MODES = {"constant": 0, "reflect": 1, "symmetric": 2}

_REF_PREFIX = "REF::"

# Operators whose exported form Lite 2.0 reads as it is: no constant inputs to fold.
_UNCHANGED_OPS = {
    "Add", "Conv2D", "Depend", "Load", "MakeTuple", "MaxPool", "ReLU", "ReLU6", "Reshape", "TupleGetItem",
    "UpdateState",
}


class UnsupportedOperatorError(InputError):
    """The MINDIR holds an operator (or operator setting) this rewrite cannot express for Lite 2.0."""


def _mind_ir_pb2():
    # Imported lazily: it pulls in MindSpore, which callers of --help should not wait for.
    import src  # noqa: F401  (sets oneDNN options before MindSpore loads)
    from mindspore.train import mind_ir_pb2
    return mind_ir_pb2


def _decode_attribute(attr, pb):
    """An AttributeProto value -> Python scalar / tuple / numpy array / None."""
    kinds = pb.AttributeProto
    kind = attr.type
    if kind in (kinds.TUPLE, kinds.LIST):
        return tuple(_decode_attribute(item, pb) for item in attr.values)
    if kind == kinds.TENSORS:
        return _decode_tensor(attr.tensors[0], pb)
    if kind == kinds.NONE:
        return None
    if kind == kinds.BOOL:
        return bool(attr.ints[0] if len(attr.ints) else attr.i)
    if kind in (kinds.INT8, kinds.INT16, kinds.INT32, kinds.INT64, kinds.UINT8, kinds.UINT16, kinds.UINT32,
                kinds.UINT64):
        return int(attr.ints[0] if len(attr.ints) else attr.i)
    if kind == kinds.FLOAT:
        return float(attr.floats[0] if len(attr.floats) else attr.f)
    if kind == kinds.DOUBLE:
        return float(attr.doubles[0] if len(attr.doubles) else attr.d)
    if kind == kinds.STRING:
        return (attr.strings[0] if len(attr.strings) else attr.s).decode()
    raise ValueError(f"constant of attribute type {kinds.AttributeType.Name(kind)}")


_TENSOR_DTYPES = {1: np.float32, 2: np.uint8, 3: np.int8, 5: np.int16, 6: np.int32, 7: np.int64, 9: np.bool_,
                  10: np.float16, 11: np.float64}


def _decode_tensor(tensor, pb):
    dtype = _TENSOR_DTYPES.get(tensor.data_type)
    if dtype is None:
        raise ValueError(f"constant tensor of type {pb.TensorProto.DataType.Name(tensor.data_type)}")
    return np.frombuffer(tensor.raw_data, dtype=dtype).reshape(tuple(tensor.dims))


def _set_attribute(prim, name, value, pb):
    """Append attribute ``name`` = ``value`` in the encoding MindSpore uses for primitive attributes."""
    kinds = pb.AttributeProto
    attr = prim.attribute.add(name=name)
    if isinstance(value, bool):
        attr.type, attr.i = kinds.BOOL, int(value)
    elif isinstance(value, (int, np.integer)):
        attr.type, attr.i = kinds.INT64, int(value)
    elif isinstance(value, (float, np.floating)):
        attr.type, attr.f = kinds.FLOAT, float(value)
    elif isinstance(value, str):
        attr.type, attr.s = kinds.STRING, value.encode()
    elif isinstance(value, (tuple, list)):
        attr.type = kinds.TUPLE
        for item in value:
            if isinstance(item, (tuple, list)):
                inner = attr.values.add(type=kinds.TUPLE)
                for sub in item:
                    inner.values.add(type=kinds.INT64, ints=[int(sub)])
            else:
                attr.values.add(type=kinds.INT64, ints=[int(item)])
    else:
        raise TypeError(f"attribute {name}: cannot encode {type(value).__name__}")


class _Rewrite:
    """Result of rewriting one node: new operator name, attributes, and which inputs stay."""

    def __init__(self, op_type, attributes, kept_inputs):
        self.op_type = op_type
        self.attributes = attributes
        self.kept_inputs = kept_inputs


def _constant(value, what):
    """A folded input must be a graph constant; a node name here means it is computed at run time."""
    if isinstance(value, str):
        raise ValueError(f"{what} is computed in the graph, not a constant")
    return value


def _format_name(value, what):
    if value not in _FORMAT_NAMES:
        raise ValueError(f"{what}: unknown data format {value}")
    return _FORMAT_NAMES[value]


def _rewrite_batch_norm(args, attrs, rank):
    is_training, epsilon, momentum, data_format = (_constant(v, "setting") for v in args[5:])
    if is_training:
        raise ValueError("BatchNorm in training mode (export the network after set_train(False))")
    return _Rewrite("BatchNorm", {"is_training": False, "epsilon": epsilon, "momentum": momentum,
                                  "format": _format_name(data_format, "BatchNorm")}, 5)


def _rewrite_bias_add(args, attrs, rank):
    return _Rewrite("BiasAdd", {"format": _format_name(_constant(args[2], "data_format"), "BiasAdd")}, 2)


def _rewrite_concat(args, attrs, rank):
    return _Rewrite("Concat", {"axis": _constant(args[1], "axis")}, 1)


def _rewrite_avg_pool(args, attrs, rank):
    kernel_size, strides, pad_mode, data_format = (_constant(v, "setting") for v in args[1:])
    if pad_mode not in _PAD_MODE_NAMES:
        raise ValueError(f"AvgPool with pad_mode {pad_mode} (use a zero Pad and pad_mode='valid')")
    return _Rewrite("AvgPool", {"kernel_size": (1, 1, *kernel_size), "strides": (1, 1, *strides),
                                "pad_mode": _PAD_MODE_NAMES[pad_mode],
                                "format": _format_name(data_format, "AvgPool")}, 1)


def _rewrite_reduce_sum(args, attrs, rank):
    # Version 1 keeps the axis as the second input (a graph constant) and keep_dims as an attribute.
    keep_dims, skip_mode = (_constant(v, "setting") for v in args[2:4])
    _constant(args[1], "axis")
    if skip_mode:
        raise ValueError("ReduceSum with skip_mode=True")
    return _Rewrite("ReduceSum", {"keep_dims": bool(keep_dims)}, 2)


def _rewrite_resize_bilinear(args, attrs, rank):
    size, align_corners, half_pixel_centers = (_constant(v, "size/mode") for v in args[1:])
    if align_corners:
        mode = _COORD_ALIGN_CORNERS
    elif half_pixel_centers:
        mode = _COORD_HALF_PIXEL
    else:
        mode = _COORD_ASYMMETRIC
    height, width = (int(v) for v in size)
    return _Rewrite("Resize", {
        "format": 0, "method": _RESIZE_LINEAR, "new_height": height, "new_width": width,
        "preserve_aspect_ratio": False, "coordinate_transform_mode": mode, "cubic_coeff": -0.75,
        "exclude_outside": 0, "extrapolation_value": 0.0, "nearest_mode": 0}, 1)


def _pad_rewrite(rank, pairs, mode, value):
    """Pad with per-dimension (before, after) ``pairs`` given from the first dimension on."""
    if mode not in _PADDING_MODES:
        raise ValueError(f"padding mode '{mode}'")
    if rank is None:
        raise ValueError("output rank unknown (node carries no tensor shape)")
    pairs = [(0, 0)] * (rank - len(pairs)) + [tuple(int(v) for v in p) for p in pairs]
    if any(v < 0 for p in pairs for v in p):
        raise ValueError("negative padding (cropping)")
    return _Rewrite("Pad", {"paddings": tuple(pairs), "padding_mode": _PADDING_MODES[mode],
                            "constant_value": float(value)}, 1)


def _rewrite_pad_v3(args, attrs, rank):
    paddings = [int(v) for v in np.asarray(_constant(args[1], "paddings")).ravel()]
    value = _constant(args[2], "fill value")
    if attrs.get("paddings_contiguous", True) is False:
        raise ValueError("PadV3 with paddings_contiguous=False")
    # ops.pad lists (before, after) from the LAST dimension backwards.
    pairs = [tuple(paddings[i:i + 2]) for i in range(0, len(paddings), 2)][::-1]
    fill = 0.0 if value is None else float(np.asarray(value).ravel()[0])
    return _pad_rewrite(rank, pairs, attrs.get("mode", "constant"), fill)


def _rewrite_mirror_pad(args, attrs, rank):
    paddings = np.asarray(_constant(args[1], "paddings")).reshape(-1, 2).tolist()
    return _pad_rewrite(rank, paddings, attrs.get("mode", "REFLECT").lower(), 0.0)


_REWRITES = {
    "BatchNorm": _rewrite_batch_norm,
    "BiasAdd": _rewrite_bias_add,
    "Concat": _rewrite_concat,
    "AvgPool": _rewrite_avg_pool,
    "ReduceSum": _rewrite_reduce_sum,
    "ResizeBilinearV2": _rewrite_resize_bilinear,
    "PadV3": _rewrite_pad_v3,
    "MirrorPad": _rewrite_mirror_pad,
}


def _node_rank(node, pb):
    """Rank of a node's output tensor from the 'shape' attribute export writes; None for tuple outputs."""
    for attr in node.attribute:
        if attr.name == "shape" and attr.type == pb.AttributeProto.TENSORS:
            return len(attr.tensors[0].dims)
    return None


def _primitive_attributes(prim, pb):
    values = {}
    for attr in prim.attribute:
        try:
            values[attr.name] = _decode_attribute(attr, pb)
        except ValueError:
            continue  # attributes this rewrite never reads (e.g. type objects)
    return values


def rewrite_model_to_v1(model, source="MINDIR"):
    """Rewrite a parsed ``mind_ir_pb2.ModelProto`` (version 2 or 3) in place into the version-1 layout."""
    pb = _mind_ir_pb2()
    if len(model.functions):
        raise UnsupportedOperatorError(source, f"graph has {len(model.functions)} sub-graphs (control flow); "
                                               "only a single straight-line graph can be rewritten")
    graph = model.graph
    primitives = {p.name: p for p in model.primitives}
    constants = {}
    for node in graph.node:
        if node.op_type == "Constant":
            value_attr = next((a for a in node.attribute if a.name == "value"), None)
            try:
                constants[node.output[0]] = _decode_attribute(value_attr, pb)
            except (ValueError, AttributeError):
                continue  # monads and other non-data constants stay graph inputs as exported

    new_primitives = []
    used_constants = set()
    for index, node in enumerate(graph.node):
        if node.op_type == "Constant":
            continue
        if not node.op_type.startswith(_REF_PREFIX):
            raise UnsupportedOperatorError(source, f"node {node.name} has unsupported op_type {node.op_type}")
        prim = primitives[node.op_type[len(_REF_PREFIX):]]
        op = prim.op_type
        attrs = _primitive_attributes(prim, pb)
        try:
            if op in _UNCHANGED_OPS:
                rewrite = None
            elif op in _REWRITES:
                args = [constants.get(name, name) for name in node.input]
                rewrite = _REWRITES[op](args, attrs, _node_rank(node, pb))
            else:
                raise ValueError("operator is not supported by the MindIR v1 rewrite for MindSpore Lite 2.0")
        except (ValueError, TypeError, KeyError) as error:
            raise UnsupportedOperatorError(source, f"operator {op} (node {node.name}): {error}") from None

        new_prim = pb.PrimitiveProto()
        new_prim.CopyFrom(prim)
        new_prim.ClearField("prim_type")
        if rewrite is not None:
            new_prim.op_type = rewrite.op_type
            new_prim.ClearField("attribute")
            for name, value in rewrite.attributes.items():
                _set_attribute(new_prim, name, value, pb)
            del node.input[rewrite.kept_inputs:]
        new_prim.name = f"{new_prim.op_type}:v1_{index}"
        used_constants.update(node.input)
        node.op_type = _REF_PREFIX + new_prim.name
        new_primitives.append(new_prim)

    # Constants whose only users were folded into attributes would be dangling graph nodes.
    kept_nodes = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used_constants]
    del graph.node[:]
    graph.node.extend(kept_nodes)
    del model.primitives[:]
    model.primitives.extend(new_primitives)
    model.mind_ir_version = pb.IR_VERSION
    return model


def convert_mindir_to_v1(src_path, dst_path):
    """Read the MINDIR at ``src_path``, rewrite it for MindSpore Lite 2.0, write ``dst_path`` atomically.

    A file already in the version-1 layout is written out unchanged.

    Raises ``InputError`` if the file cannot be read or parsed and ``UnsupportedOperatorError``
    (a subclass) naming the operator if the graph holds something the rewrite does not cover.
    """
    pb = _mind_ir_pb2()
    try:
        with open(src_path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise InputError(src_path, f"cannot read ({error.strerror})") from None
    model = pb.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # protobuf raises DecodeError or RuntimeError depending on the backend
        raise InputError(src_path, "not a MINDIR file (protobuf parse failed)") from None
    if not model.HasField("graph") or not len(model.graph.node):
        raise InputError(src_path, "not a MINDIR file (no graph)")
    if model.mind_ir_version > pb.IR_VERSION:
        rewrite_model_to_v1(model, source=os.fspath(src_path))
    with atomic_path(dst_path) as tmp:
        with open(tmp, "wb") as f:
            f.write(model.SerializeToString())
        os.chmod(tmp, 0o644)  # a model to copy to devices, not a private temporary file


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m src.deploy.mindir_v1",
        description="Rewrite a MindSpore 2.x MINDIR (mind_ir_version 3) for MindSpore Lite 2.0 (version 1).")
    parser.add_argument("src", help="MINDIR written by mindspore.export")
    parser.add_argument("dst", help="output MINDIR for ascend310_infer/patchcore_infer")
    args = parser.parse_args(argv)
    try:
        convert_mindir_to_v1(args.src, args.dst)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
