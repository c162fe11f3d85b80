"""Writes an f16 copy of a GGUF: every quantized 2-D tensor dequantized and stored as F16, 1-D
tensors (norms) kept as they are, metadata copied. For the default model this gives the same
f16 values kiln's converted directory holds, in the layout llama.cpp reads.

usage: python write_f16_gguf.py IN.gguf OUT.gguf
"""

import os
import sys

import gguf
import numpy as np

MOSTLY_F16 = 1


def main(source: str, target: str) -> None:
    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    partial = target + ".partial"
    writer = gguf.GGUFWriter(partial, arch)
    for field in reader.fields.values():
        # The writer adds the architecture and the GGUF.* header fields itself.
        if field.name == "general.architecture" or field.name.startswith("GGUF."):
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        value = MOSTLY_F16 if field.name == "general.file_type" else field.contents()
        writer.add_key_value(field.name, value, value_type, sub_type=sub_type)
    for tensor in reader.tensors:
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
        if len(tensor.shape) >= 2:
            values = values.astype(np.float16)
        else:
            values = values.astype(np.float32)
        writer.add_tensor(tensor.name, values)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.replace(partial, target)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2])
