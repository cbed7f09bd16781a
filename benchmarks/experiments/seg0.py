import os, sys, time
os.environ["HF_HUB_OFFLINE"]="1"
import numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from finetune import cranfield_split, DATA, per_query_ndcg, dense_run
from embedsmith import load_encoder
from embedsmith.evaluation import RetrievalTask
from embedsmith.training import model_folder
from transformers import AutoModel, AutoTokenizer
full = RetrievalTask.from_beir(DATA / "cranfield-beir-dev", split="dev")
tq, vq = cranfield_split()
val = RetrievalTask("v", full.corpus, full.queries, {q: full.qrels[q] for q in vq}, "validation")
first = dense_run(val, load_encoder("minilm", backend="torch", device="cpu"))
K=int(sys.argv[1]) if len(sys.argv)>1 else 100
first = {q: ids[:K] for q, ids in first.items()}
print("first", per_query_ndcg(val, first).mean())
f = str(model_folder("minilm")); tok = AutoTokenizer.from_pretrained(f); net = AutoModel.from_pretrained(f).eval()
def score(q, docs, tt_zero, mode):
    enc = tok([q]*len(docs), docs, padding=True, truncation="only_second", max_length=256, return_tensors="pt", return_token_type_ids=True)
    tt = enc["token_type_ids"]; am = enc["attention_mask"]
    kw = dict(input_ids=enc["input_ids"], attention_mask=am, token_type_ids=torch.zeros_like(tt) if tt_zero else tt)
    if mode == "block":
        # block-diagonal: no cross attention (sanity check = bi-encoder)
        m = (tt[:, :, None] == tt[:, None, :]) & (am[:, :, None] > 0) & (am[:, None, :] > 0)
        kw["attention_mask"] = m[:, None].float().log().clamp(min=-1e4)  # additive
    h = net(**kw).last_hidden_state
    a_mask = ((tt == 0) & (am > 0)).float()[..., None]; b_mask = ((tt == 1) & (am > 0)).float()[..., None]
    qa = (h * a_mask).sum(1) / a_mask.sum(1); db = (h * b_mask).sum(1) / b_mask.sum(1)
    return torch.nn.functional.cosine_similarity(qa, db).numpy()
for tt_zero in (1, 0):
  for mode in ("cross",):
    t=time.time(); out={}
    with torch.no_grad():
        for q, ids in first.items():
            s = score(val.queries[q], [val.corpus[d] for d in ids], tt_zero, mode)
            out[q] = [ids[i] for i in np.argsort(-s, kind="stable")]
    print("tt_zero", tt_zero, mode, per_query_ndcg(val, out).mean(), f"{time.time()-t:.0f}s", flush=True)
