# sanity check of utils/: patched attention == stock timm, FP top-1 on the 1000 val images
import argparse, time, torch, timm
from utils import build_model, build_dataset
from utils.build_model import WEIGHTS
args = argparse.Namespace(model='vit_tiny', dataset='/work/shared/data', calib_batchsize=32,
                          val_batchsize=100, num_workers=2, seed=0)
train_loader, val_loader = build_dataset(args)
m = build_model('vit_tiny_patch16_224').eval()
ref = timm.create_model('vit_tiny_patch16_224', pretrained=True, pretrained_cfg_overlay=dict(file=WEIGHTS)).eval()
x, y = next(iter(train_loader))
with torch.no_grad():
    print('max |patched - stock| on calib batch:', (m(x) - ref(x)).abs().max().item())
c1 = c5 = n = 0
t = time.time()
with torch.no_grad():
    for x, y in val_loader:
        o = m(x); top5 = o.topk(5, 1).indices
        c1 += (top5[:, 0] == y).sum().item(); c5 += (top5 == y[:, None]).any(1).sum().item(); n += len(y)
print(f'FP32 top1 {100*c1/n:.1f} top5 {100*c5/n:.1f} n={n} ({time.time()-t:.0f}s)')
