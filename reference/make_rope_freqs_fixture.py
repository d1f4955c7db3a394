"""llama.cpp's rope_freqs.weight for the llama_scaled parity model, from transformers.

llama.cpp stores Llama 3 rope scaling as one factor per rotary frequency (convert_hf_to_gguf
writes it as the tensor rope_freqs.weight; inference divides each frequency by its factor). The
factors here are transformers' own: the base inverse frequencies over the llama3-scaled ones
(ROPE_INIT_FUNCTIONS), so Finch's exported tensor is checked against an independent computation.

Writes Tests/FinchTestSupport/Fixtures/parity/llama_scaled/rope_freqs.json: {"factors": [...], versions}.
Usage: python3 reference/make_rope_freqs_fixture.py
"""
import json
import os

import torch
import transformers
from transformers import AutoConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

root = os.path.join(os.path.dirname(__file__), "..", "Tests", "FinchTestSupport", "Fixtures", "parity", "llama_scaled")
config = AutoConfig.from_pretrained(root)
scaled, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
params = config.rope_parameters
base = params["rope_theta"]
head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
plain = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float) / head_dim))
factors = (plain / scaled).tolist()
with open(os.path.join(root, "rope_freqs.json"), "w") as f:
    json.dump({"factors": factors, "rope_parameters": params, "transformers": transformers.__version__, "torch": torch.__version__}, f, indent=1)
    f.write("\n")
print(factors)
