"""Run Hugging Face ``transformers`` BertModel (PyTorch) on token arrays; used as an independent reference.

    python torch_reference.py <hf_model_dir> <in.npz> <out.npz>

Runs in a separate interpreter (torch is not in the bertops venv), e.g. /tmp/refvenv/bin/python.
"""

import sys

import numpy as np
import torch
from transformers import BertModel

model_dir, in_path, out_path = sys.argv[1:4]
batch = np.load(in_path)
model = BertModel.from_pretrained(model_dir, attn_implementation="eager").eval()
with torch.no_grad():
    out = model(
        input_ids=torch.from_numpy(batch["token_ids"].astype(np.int64)),
        token_type_ids=torch.from_numpy(batch["segment_ids"].astype(np.int64)),
        attention_mask=torch.from_numpy(batch["padding_mask"].astype(np.int64)),
    )
np.savez(out_path, sequence_output=out.last_hidden_state.numpy(), pooled_output=out.pooler_output.numpy())
