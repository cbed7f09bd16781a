import os, sys, json, random, time, argparse
os.environ["HF_HUB_OFFLINE"]="1"
import numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from finetune import cranfield_split, DATA, per_query_ndcg, dense_run
from embedsmith import load_encoder
from embedsmith.evaluation import RetrievalTask
from embedsmith.training import TrainingData
from embedsmith.training import add_hard_negatives, model_folder
from transformers import AutoModel, AutoTokenizer
ap = argparse.ArgumentParser()
ap.add_argument("--lr", type=float, default=2e-5); ap.add_argument("--steps", type=int, default=200)
ap.add_argument("--bs", type=int, default=16); ap.add_argument("--maxlen", type=int, default=96)
ap.add_argument("--topk", type=int, default=30); ap.add_argument("--neg", type=int, default=3); ap.add_argument("--rand", type=int, default=1)
ap.add_argument("--scale", type=float, default=20.0); ap.add_argument("--tt", type=int, default=1)
ap.add_argument("--evalfirst", type=int, default=1); ap.add_argument("--model", default="minilm")
a = ap.parse_args(); print(vars(a), flush=True)
full = RetrievalTask.from_beir(DATA / "cranfield-beir-dev", split="dev")
tq, vq = cranfield_split()
val = RetrievalTask("v", full.corpus, full.queries, {q: full.qrels[q] for q in vq}, "validation")
rows = [json.loads(x) for x in (DATA / "cranfield-beir-dev" / "corpus.jsonl").read_text().splitlines()]
data = TrainingData(source="x")
for r in rows:
    if r.get("title","").strip() and r.get("text","").strip(): data.add(r["title"], r["text"])
for q in tq:
    for d, g in full.qrels[q].items():
        if g > 0: data.add(full.queries[q], full.corpus[d])
corpus = [t for t in full.corpus.values() if t.strip()]
enc0 = load_encoder("minilm", backend="torch", device="cpu")
m = add_hard_negatives(data, method="dense", per_query=a.neg, encoder=enc0, corpus=corpus)
rng = random.Random(0)
from embedsmith.training.negatives import random_documents as _random_documents
pos_of = {}
for an, p in zip(data.anchors, data.positives): pos_of.setdefault(an, []).append(p)
groups = [(an, [p, *negs, *_random_documents(rng, corpus, an, pos_of[an], negs, a.rand)]) for an, p, negs in zip(m.anchors, m.positives, m.negatives)]
per = max(len(g[1]) for g in groups); groups = [g for g in groups if len(g[1]) == per]
print("groups", len(groups), "per", per, flush=True)
torch.manual_seed(0)
f = str(model_folder("minilm")) if a.model == "minilm" else a.model
tok = AutoTokenizer.from_pretrained(f); net = AutoModel.from_pretrained(f)
def fwd(qs, ds, maxlen):
    enc = tok(qs, ds, padding=True, truncation="only_second", max_length=maxlen, return_tensors="pt", return_token_type_ids=True)
    tt = enc["token_type_ids"]; am = enc["attention_mask"]
    h = net(input_ids=enc["input_ids"], attention_mask=am, token_type_ids=tt if a.tt else torch.zeros_like(tt)).last_hidden_state
    am_ = ((tt == 0) & (am > 0)).float()[..., None]; bm_ = ((tt == 1) & (am > 0)).float()[..., None]
    qa = (h * am_).sum(1) / am_.sum(1); db = (h * bm_).sum(1) / bm_.sum(1)
    return torch.nn.functional.cosine_similarity(qa, db)
first = dense_run(val, enc0); first = {q: ids[:a.topk] for q, ids in first.items()}
base = per_query_ndcg(val, first)
def evaluate():
    net.eval(); out = {}
    with torch.no_grad():
        for q, ids in first.items():
            s = fwd([val.queries[q]]*len(ids), [val.corpus[d] for d in ids], 256).numpy()
            out[q] = [ids[i] for i in np.argsort(-s, kind="stable")]
    net.train(); return per_query_ndcg(val, out)
if a.evalfirst: print(f"step0 first@{a.topk} {base.mean():.4f} seg {evaluate().mean():.4f}", flush=True)
opt = torch.optim.AdamW(net.parameters(), lr=a.lr)
total = a.steps; warm = max(1, total // 10)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
net.train(); step = 0; t0 = time.time(); losses = []
gb = max(1, a.bs // per)
while step < total:
    rng.shuffle(groups)
    for i in range(0, len(groups), gb):
        b = groups[i:i+gb]
        s = fwd([g[0] for g in b for _ in g[1]], [d for g in b for d in g[1]], a.maxlen).view(len(b), per) * a.scale
        loss = torch.nn.functional.cross_entropy(s, torch.zeros(len(b), dtype=torch.long))
        loss.backward(); opt.step(); sched.step(); opt.zero_grad(); step += 1; losses.append(loss.item())
        if step % 20 == 0: print(f"step {step} loss {np.mean(losses[-20:]):.3f} {time.time()-t0:.0f}s", flush=True)
        if step >= total: break
t1 = time.time() - t0
r = evaluate()
print(f"RESULT train {t1:.0f}s first@{a.topk} {base.mean():.4f} reranked {r.mean():.4f}", flush=True)
if len(sys.argv) and os.environ.get("SAVE"): net.save_pretrained(os.environ["SAVE"]); tok.save_pretrained(os.environ["SAVE"])
