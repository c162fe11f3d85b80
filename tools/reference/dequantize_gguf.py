"""Writes a copy of a GGUF with every tensor dequantized to F32 (metadata unchanged, Q/K rows as stored).

Used to check llama_numpy.py against llama.cpp without llama.cpp's Q8 activation quantization: on an
F32 file (and an F32 KV cache) llama.cpp computes in f32, so its logits should match numpy's
"f32" variant to float rounding. --f16 rounds each dequantized matrix to F16 instead (norms stay F32).
"""

import argparse

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("src_gguf")
    parser.add_argument("dst_gguf")
    parser.add_argument("--f16", action="store_true", help="store matrices as F16 instead of F32")
    args = parser.parse_args(argv)

    reader = GGUFReader(args.src_gguf)
    arch = reader.fields["general.architecture"].contents()
    writer = GGUFWriter(args.dst_gguf, arch)
    for field in reader.fields.values():
        # GGUF.* are written by the writer itself, the architecture came with arch, file_type is set below.
        if field.name.startswith("GGUF.") or field.name in ("general.architecture", "general.file_type"):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), value_type, sub_type=sub_type)
    writer.add_file_type(1 if args.f16 else 0)  # overrides the Q4_1 file type: LLAMA_FTYPE_ALL_F32 / MOSTLY_F16

    for tensor in reader.tensors:
        values = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        values = values.reshape([int(n) for n in reversed(tensor.shape)])
        if args.f16 and values.ndim == 2:
            values = values.astype(np.float16)
        writer.add_tensor(tensor.name, values)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main()
