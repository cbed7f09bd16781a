import os, sys, json, random, time, math, argparse
os.environ["HF_HUB_OFFLINE"]="1"
import numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from finetune import cranfield_split, DATA, per_query_ndcg, dense_run
from embedsmith import load_encoder
from embedsmith.evaluation import RetrievalTask
from embedsmith.training import TrainingData
from embedsmith.training import add_hard_negatives, model_folder
from sentence_transformers import CrossEncoder
ap = argparse.ArgumentParser()
ap.add_argument("--data", default="q"); ap.add_argument("--fmt", default="full")
ap.add_argument("--bm25", type=int, default=1); ap.add_argument("--rand", type=int, default=1)
ap.add_argument("--skip", type=int, default=0)
ap.add_argument("--lr", type=float, default=5e-5); ap.add_argument("--head_lr", type=float, default=1e-3)
ap.add_argument("--steps", type=int, default=60); ap.add_argument("--bs", type=int, default=32)
ap.add_argument("--maxlen", type=int, default=128); ap.add_argument("--topk", type=int, default=30)
ap.add_argument("--freeze", type=int, default=0); ap.add_argument("--loss", default="bce"); ap.add_argument("--head_std", type=float, default=0); ap.add_argument("--pooler_id", type=int, default=0); ap.add_argument("--method", default="bm25")
a = ap.parse_args(); print(vars(a), flush=True)
full = RetrievalTask.from_beir(DATA / "cranfield-beir-dev", split="dev")
tq, vq = cranfield_split()
val = RetrievalTask("v", full.corpus, full.queries, {q: full.qrels[q] for q in vq}, "validation")
rows = [json.loads(x) for x in (DATA / "cranfield-beir-dev" / "corpus.jsonl").read_text().splitlines()]
body = {r["_id"]: r["text"] for r in rows}
fulltext = {d: full.corpus[d] for d in full.corpus}
print("corpus sample:", repr(list(fulltext.values())[5][:120]))
doc = fulltext if a.fmt == "full" else body
data = TrainingData(source="x")
if "t" in a.data:
    for r in rows:
        if r.get("title","").strip() and r.get("text","").strip(): data.add(r["title"], r["text"])
for q in tq:
    for d, g in full.qrels[q].items():
        if g > 0: data.add(full.queries[q], doc[d])
corpus = [doc[d] for d in doc if doc[d].strip()]
rowsx = []
if a.bm25:
    m = add_hard_negatives(data, method=a.method, per_query=a.bm25, encoder=(load_encoder(str(model_folder("minilm")), backend="torch", device="cpu") if a.method=="dense" else None), corpus=corpus, skip_top=a.skip)
    for an, p, negs in zip(m.anchors, m.positives, m.negatives):
        rowsx.append((an, p, 1.0)); rowsx += [(an, n, 0.0) for n in negs]
else:
    for an, p in zip(data.anchors, data.positives): rowsx.append((an, p, 1.0))
rng = random.Random(0)
pos_of = {}
for an, p in zip(data.anchors, data.positives): pos_of.setdefault(an, set()).add(p)
for an in list(pos_of):
    for p in pos_of[an]:
        for _ in range(a.rand):
            c = rng.choice(corpus)
            if c not in pos_of[an]: rowsx.append((an, c, 0.0))
npos = sum(r[2] for r in rowsx); print("rows", len(rowsx), "pos", npos, flush=True)
torch.manual_seed(0)
ce = CrossEncoder(str(model_folder("minilm")), num_labels=1, device="cpu", max_length=a.maxlen, local_files_only=True)
net, tok = ce.model, ce.tokenizer
if a.head_std: net.classifier.weight.data.normal_(0, a.head_std)
if a.pooler_id:
    net.bert.pooler.dense.weight.data.copy_(torch.eye(384)); net.bert.pooler.dense.bias.data.zero_()
if a.freeze:
    for p in net.bert.embeddings.parameters(): p.requires_grad = False
    for l in net.bert.encoder.layer[:a.freeze]:
        for p in l.parameters(): p.requires_grad = False
head = [p for n, p in net.named_parameters() if n.startswith("classifier") or "pooler" in n]
body_p = [p for n, p in net.named_parameters() if not (n.startswith("classifier") or "pooler" in n) and p.requires_grad]
opt = torch.optim.AdamW([{"params": body_p, "lr": a.lr}, {"params": head, "lr": a.head_lr}])
total = a.steps; warm = max(1, total // 10)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / warm if s < warm else max(0.0, (total - s) / max(1, total - warm)))
pw = (len(rowsx) - npos) / npos
loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(pw))
first = dense_run(val, load_encoder("minilm", backend="torch", device="cpu"))
first = {q: ids[:a.topk] for q, ids in first.items()}
base = per_query_ndcg(val, first)
def evaluate():
    net.eval(); out = {}
    with torch.no_grad():
        for q, ids in first.items():
            enc = tok([val.queries[q]] * len(ids), [val.corpus[d] for d in ids], padding=True, truncation=True, max_length=256, return_tensors="pt")
            lg = net(**enc).logits.view(-1).numpy()
            out[q] = [ids[i] for i in np.argsort(-lg, kind="stable")]
    net.train()
    return per_query_ndcg(val, out)
net.train(); step = 0; t0 = time.time(); losses = []
if a.loss == "listwise":
    groups = []
    for an, p, negs in zip(m.anchors, m.positives, m.negatives):
        extra = [rng.choice(corpus) for _ in range(a.rand)]
        groups.append((an, [p, *negs, *extra]))
    per = 1 + a.bm25 + a.rand
    gb = max(1, a.bs // per)
    while step < total:
        rng.shuffle(groups)
        for i in range(0, len(groups), gb):
            b = groups[i:i+gb]
            enc = tok([g[0] for g in b for _ in g[1]], [d for g in b for d in g[1]], padding=True, truncation=True, max_length=a.maxlen, return_tensors="pt")
            lg = net(**enc).logits.view(len(b), per)
            loss = torch.nn.functional.cross_entropy(lg, torch.zeros(len(b), dtype=torch.long))
            loss.backward(); opt.step(); sched.step(); opt.zero_grad(); step += 1; losses.append(loss.item())
            if step % 20 == 0: print(f"step {step} loss {np.mean(losses[-20:]):.3f} {time.time()-t0:.0f}s", flush=True)
            if step >= total: break
while step < total:
    rng.shuffle(rowsx)
    for i in range(0, len(rowsx), a.bs):
        b = rowsx[i:i+a.bs]
        enc = tok([r[0] for r in b], [r[1] for r in b], padding=True, truncation=True, max_length=a.maxlen, return_tensors="pt")
        loss = loss_fn(net(**enc).logits.view(-1), torch.tensor([r[2] for r in b]))
        loss.backward(); opt.step(); sched.step(); opt.zero_grad(); step += 1; losses.append(loss.item())
        if step % 20 == 0: print(f"step {step} loss {np.mean(losses[-20:]):.3f} {time.time()-t0:.0f}s", flush=True)
        if step >= total: break
t1 = time.time() - t0
r = evaluate()
print(f"RESULT train {t1:.0f}s first@{a.topk} {base.mean():.4f} reranked {r.mean():.4f} eval {time.time()-t0-t1:.0f}s", flush=True)
