import os, sys, json, random, time, argparse
os.environ["HF_HUB_OFFLINE"]="1"
import numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from finetune import cranfield_split, DATA, per_query_ndcg, dense_run, bootstrap_ci
from embedsmith import load_encoder
from embedsmith.evaluation import RetrievalTask
from embedsmith.training import TrainingData, inverse_cloze
from embedsmith.training import add_hard_negatives, model_folder
from embedsmith.training.negatives import random_documents as _random_documents
from transformers import AutoModel, AutoTokenizer
ap = argparse.ArgumentParser()
ap.add_argument("--lr", type=float, default=3e-5); ap.add_argument("--gate_lr", type=float, default=0.05)
ap.add_argument("--gate", type=float, default=-6.0); ap.add_argument("--freeze_gate", type=int, default=0)
ap.add_argument("--steps", type=int, default=200); ap.add_argument("--groups", type=int, default=4)
ap.add_argument("--maxlen", type=int, default=96); ap.add_argument("--qlen", type=int, default=32)
ap.add_argument("--topk", type=int, default=30); ap.add_argument("--neg", type=int, default=3); ap.add_argument("--rand", type=int, default=1)
ap.add_argument("--scale", type=float, default=20.0); ap.add_argument("--ict", type=int, default=0)
ap.add_argument("--skip", type=int, default=0); ap.add_argument("--evalfirst", type=int, default=0); ap.add_argument("--evallen", type=int, default=256)
a = ap.parse_args(); print(vars(a), flush=True)
full = RetrievalTask.from_beir(DATA / "cranfield-beir-dev", split="dev")
tq, vq = cranfield_split()
val = RetrievalTask("v", full.corpus, full.queries, {q: full.qrels[q] for q in vq}, "validation")
rows = [json.loads(x) for x in (DATA / "cranfield-beir-dev" / "corpus.jsonl").read_text().splitlines()]
data = TrainingData(source="x")
for r in rows:
    if r.get("title","").strip() and r.get("text","").strip(): data.add(r["title"], r["text"])
if a.ict: data.extend(inverse_cloze([r["text"] for r in rows if r.get("text","").strip()]))
for q in tq:
    for d, g in full.qrels[q].items():
        if g > 0: data.add(full.queries[q], full.corpus[d])
corpus = [t for t in full.corpus.values() if t.strip()]
enc0 = load_encoder("minilm", backend="torch", device="cpu")
t0 = time.time()
m = add_hard_negatives(data, method="dense", per_query=a.neg, encoder=enc0, corpus=corpus, skip_top=a.skip) if a.neg else TrainingData.__new__(TrainingData)
if not a.neg:
    from types import SimpleNamespace
    m = SimpleNamespace(anchors=data.anchors, positives=data.positives, negatives=[[] for _ in data.anchors])
rng = random.Random(0)
pos_of = {}
for an, p in zip(data.anchors, data.positives): pos_of.setdefault(an, []).append(p)
groups = [(an, [p, *negs, *_random_documents(rng, corpus, an, pos_of[an], negs, a.rand)]) for an, p, negs in zip(m.anchors, m.positives, m.negatives)]
per = max(len(g[1]) for g in groups); groups = [g for g in groups if len(g[1]) == per]
print("groups", len(groups), "per", per, f"mining {time.time()-t0:.0f}s", flush=True)
torch.manual_seed(0)
f = str(model_folder("minilm"))
tok = AutoTokenizer.from_pretrained(f); net = AutoModel.from_pretrained(f)
H = net.config.num_attention_heads
gate = torch.nn.Parameter(torch.full((H,), a.gate))
def fwd(qs, ds, maxlen):
    eq = tok(qs, truncation=True, max_length=a.qlen)["input_ids"]; ed = tok(ds, truncation=True, max_length=maxlen)["input_ids"]
    L = max(len(x) + len(y) for x, y in zip(eq, ed)); B = len(qs)
    ids = torch.zeros(B, L, dtype=torch.long); seg = torch.full((B, L), 2); pos = torch.zeros(B, L, dtype=torch.long)
    for i, (x, y) in enumerate(zip(eq, ed)):
        ids[i, :len(x)] = torch.tensor(x); ids[i, len(x):len(x)+len(y)] = torch.tensor(y)
        seg[i, :len(x)] = 0; seg[i, len(x):len(x)+len(y)] = 1
        pos[i, :len(x)] = torch.arange(len(x)); pos[i, len(x):len(x)+len(y)] = torch.arange(len(y))
    same = (seg[:, None, :, None] == seg[:, None, None, :])
    valid = (seg != 2)[:, None, None, :]
    bias = torch.where(same, torch.zeros(()), gate[None, :, None, None].expand(B, H, L, L))
    mask = torch.where(valid, bias, torch.tensor(-1e4))
    h = net(input_ids=ids, attention_mask=mask, token_type_ids=torch.zeros_like(ids), position_ids=pos).last_hidden_state
    am_ = (seg == 0).float()[..., None]; bm_ = (seg == 1).float()[..., None]
    qa = (h * am_).sum(1) / am_.sum(1); db = (h * bm_).sum(1) / bm_.sum(1)
    return torch.nn.functional.cosine_similarity(qa, db)
first = dense_run(val, enc0); first = {q: ids[:a.topk] for q, ids in first.items()}
base = per_query_ndcg(val, first)
def evaluate():
    net.eval(); out = {}
    with torch.no_grad():
        for q, ids in first.items():
            s = fwd([val.queries[q]]*len(ids), [val.corpus[d] for d in ids], a.evallen).numpy()
            out[q] = [ids[i] for i in np.argsort(-s, kind="stable")]
    net.train(); return per_query_ndcg(val, out)
if a.evalfirst: print(f"step0 first@{a.topk} {base.mean():.4f} gated {evaluate().mean():.4f}", flush=True)
params = [{"params": list(net.parameters()), "lr": a.lr}]
if not a.freeze_gate: params.append({"params": [gate], "lr": a.gate_lr, "weight_decay": 0.0})
opt = torch.optim.AdamW(params)
total = a.steps; warm = max(1, total // 10)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
net.train(); step = 0; t0 = time.time(); losses = []
gb = a.groups
while step < total:
    rng.shuffle(groups)
    for i in range(0, len(groups), gb):
        b = groups[i:i+gb]
        s = fwd([g[0] for g in b for _ in g[1]], [d for g in b for d in g[1]], a.maxlen).view(len(b), per) * a.scale
        loss = torch.nn.functional.cross_entropy(s, torch.zeros(len(b), dtype=torch.long))
        loss.backward(); opt.step(); sched.step(); opt.zero_grad(); step += 1; losses.append(loss.item())
        if step % 25 == 0: print(f"step {step} loss {np.mean(losses[-25:]):.3f} gate {gate.data.numpy().round(2)} {time.time()-t0:.0f}s", flush=True)
        if step >= total: break
t1 = time.time() - t0
r = evaluate(); lo, hi = bootstrap_ci(r - base)
print(f"RESULT train {t1:.0f}s first@{a.topk} {base.mean():.4f} reranked {r.mean():.4f} CI [{lo:+.3f},{hi:+.3f}] gate {gate.data.numpy().round(2)}", flush=True)
