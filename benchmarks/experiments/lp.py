import os, sys, json, random, time
os.environ["HF_HUB_OFFLINE"]="1"
import numpy as np, torch
sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))
from finetune import cranfield_split, DATA, per_query_ndcg, dense_run
from embedsmith import load_encoder
from embedsmith.evaluation import RetrievalTask
from embedsmith.training import TrainingData
from embedsmith.training import add_hard_negatives, model_folder
from sentence_transformers import CrossEncoder
from sklearn.linear_model import LogisticRegression
full = RetrievalTask.from_beir(DATA / "cranfield-beir-dev", split="dev")
tq, vq = cranfield_split()
val = RetrievalTask("v", full.corpus, full.queries, {q: full.qrels[q] for q in vq}, "validation")
data = TrainingData(source="x")
for q in tq:
    for d, g in full.qrels[q].items():
        if g > 0: data.add(full.queries[q], full.corpus[d])
corpus = list(full.corpus.values())
m = add_hard_negatives(data, method="dense", per_query=3, corpus=corpus, encoder=load_encoder(str(model_folder("minilm")), backend="torch", device="cpu"))
rng = random.Random(0)
pairs = []
for an, p, negs in zip(m.anchors, m.positives, m.negatives):
    pairs.append((an, p, 1)); pairs += [(an, n, 0) for n in negs]; pairs.append((an, rng.choice(corpus), 0))
torch.manual_seed(0)
ce = CrossEncoder(str(model_folder("minilm")), num_labels=1, device="cpu", max_length=96, local_files_only=True)
net, tok = ce.model, ce.tokenizer; net.eval()
def feats(qs, ds, ml=96, kind="pool"):
    out = []
    with torch.no_grad():
        for i in range(0, len(qs), 64):
            enc = tok(qs[i:i+64], ds[i:i+64], padding=True, truncation=True, max_length=ml, return_tensors="pt")
            h = net.bert(**enc).last_hidden_state
            if kind == "pool": out.append(net.bert.pooler(h).numpy())
            elif kind == "cls": out.append(h[:, 0].numpy())
            else:
                mk = enc["attention_mask"].unsqueeze(-1).float(); out.append(((h*mk).sum(1)/mk.sum(1)).numpy())
    return np.concatenate(out)
t0=time.time()
first = dense_run(val, load_encoder("minilm", backend="torch", device="cpu")); first = {q: ids[:30] for q, ids in first.items()}
vq_list = [(q, d) for q, ids in first.items() for d in ids]
for kind in ("pool", "cls", "mean"):
    X = feats([p[0] for p in pairs], [p[1] for p in pairs], kind=kind); y = np.array([p[2] for p in pairs])
    clf = LogisticRegression(max_iter=2000, C=1.0).fit(X, y)
    V = feats([val.queries[q] for q, d in vq_list], [val.corpus[d] for q, d in vq_list], ml=256, kind=kind)
    s = clf.decision_function(V); run = {}; i = 0
    for q, ids in first.items():
        sc = s[i:i+len(ids)]; i += len(ids); run[q] = [ids[j] for j in np.argsort(-sc, kind="stable")]
    print(kind, "train acc", clf.score(X, y), "val ndcg", per_query_ndcg(val, run).mean(), f"{time.time()-t0:.0f}s", flush=True)
