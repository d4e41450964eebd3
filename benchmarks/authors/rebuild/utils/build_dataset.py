# Written anew for this run (the ERQ repository ships only .pyc for utils/).
# Preprocessing: timm's own data config of the checkpoint (Resize 248 bicubic, CenterCrop 224,
# mean = std = 0.5). Calibration: sorted imagenet-calib file names, random.Random(args.seed).shuffle,
# first args.calib_batchsize (32). Validation: all imagenet-val images sorted by file name,
# labels from labels.csv.
import os
import math
import csv
import random
import torch
import timm
from PIL import Image
from torch.utils.data import Dataset, DataLoader

_NAMES = {'vit_tiny': 'vit_tiny_patch16_224'}


class ListDataset(Dataset):
    def __init__(self, paths, labels, transform):
        self.paths, self.labels, self.transform = paths, labels, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        img = Image.open(self.paths[i]).convert('RGB')
        return self.transform(img), self.labels[i]


def _labels(folder):
    with open(os.path.join(folder, 'labels.csv')) as f:
        return {row['file']: int(row['label']) for row in csv.DictReader(f)}


def build_transform(args):
    model = timm.create_model(_NAMES[args.model], pretrained=False)
    cfg = timm.data.resolve_data_config({}, model=model)
    return timm.data.create_transform(**cfg, is_training=False)


def build_dataset(args):
    transform = build_transform(args)
    print('transform:', transform)

    calib_dir = os.path.join(args.dataset, 'imagenet-calib')
    calib_labels = _labels(calib_dir)
    names = sorted(os.listdir(os.path.join(calib_dir, 'images')))
    random.Random(args.seed).shuffle(names)
    names = names[:args.calib_batchsize]
    print('calibration files (first 3):', names[:3])
    train_set = ListDataset([os.path.join(calib_dir, 'images', n) for n in names],
                            [calib_labels[n] for n in names], transform)

    val_dir = os.path.join(args.dataset, 'imagenet-val')
    val_labels = _labels(val_dir)
    vnames = sorted(os.listdir(os.path.join(val_dir, 'images')))
    val_set = ListDataset([os.path.join(val_dir, 'images', n) for n in vnames],
                          [val_labels[n] for n in vnames], transform)
    print('calib images:', len(train_set), 'val images:', len(val_set))

    train_loader = DataLoader(train_set, batch_size=args.calib_batchsize, shuffle=False,
                              num_workers=args.num_workers, pin_memory=False)
    val_loader = DataLoader(val_set, batch_size=args.val_batchsize, shuffle=False,
                            num_workers=args.num_workers, pin_memory=False)
    return train_loader, val_loader
