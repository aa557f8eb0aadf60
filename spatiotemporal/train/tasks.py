"""What the training loop trains: a task builds the model and datasets, computes a batch's loss, and
evaluates with the paper's protocol. `video` is Kinetics-style clip classification, `points` is
ScanNet-style per-point segmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from spatiotemporal.data.point_transforms import point_features
from spatiotemporal.models.registry import canonical_kwargs, create_model, get_spec, point_feature_keys


def load_weights(model, path: str | Path) -> str:
    """Weights from a training checkpoint directory (its model.pt), a state.pt, or any file
    `spatiotemporal.convert` reads; returns the detected layout."""
    from spatiotemporal.convert import load_pretrained

    path = Path(path)
    if path.is_dir():
        path = path / "model.pt"
    return load_pretrained(model, path)


def build_configured_model(config: dict, num_classes: int):
    """The config's model with `num_classes` outputs. With `model.weights` it starts from those
    published weights (or from the driver's share of them, `_weights`, in a Ray Train worker),
    loaded strictly; a head for another number of classes is then replaced by a new one, as
    fine-tuning on a new label set needs. A run resuming from a checkpoint (`_resume_dir`) builds
    the same architecture without the published file: the checkpoint's weights replace it."""
    name, kwargs = config["model"]["name"], dict(config["model"]["kwargs"])
    weights = config.get("_weights") or config["model"].get("weights")
    if not weights or config.get("_resume_dir"):
        return create_model(name, num_classes=num_classes, **kwargs)
    model = create_model(name, weights=weights, **kwargs)
    if model.num_classes != num_classes:
        head = getattr(model, "head", None)
        if not isinstance(head, torch.nn.Linear):
            raise ValueError(f"{name}: cannot fine-tune its {model.num_classes}-class weights to {num_classes} "
                             f"classes: the model has no linear `head` to replace")
        model.head = torch.nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
        model.num_classes = num_classes
    return model


def evaluation_config(config: dict, weights: str | None) -> dict:
    """`config` for evaluating the published weights `weights` (their own class count, so no head is
    replaced), or with None a checkpoint loaded after the build (so no fine-tuning start is fetched)."""
    model = dict(config["model"])
    if weights:
        from spatiotemporal.train.config import with_entry_kwargs
        from spatiotemporal.weights import get_entry

        entry = get_entry(weights, model["name"])
        # The config's kwargs hold its own model.weights' arguments already (load_config): those
        # are swapped for these weights' own (TimeSformer-L SSv2: 64 frames).
        previous = get_entry(model["weights"], model["name"]) if model.get("weights") else None
        kwargs = with_entry_kwargs(get_spec(model["name"]), model["kwargs"], entry, previous)
        model.update(weights=entry.name, num_classes=entry.num_classes, kwargs=kwargs)
    else:
        model["weights"] = None
    return {**config, "model": model}


def share_config_weights(config: dict) -> dict:
    """On the Ray Train driver, Ray started: `config` with `model.weights` resolved here once
    (downloaded into the cache on first use) and described for the workers (`_weights`). Not when
    the run resumes (`_resume_dir`): its checkpoint replaces the published weights."""
    weights = config["model"].get("weights")
    if not weights or config.get("_resume_dir"):
        return config
    from spatiotemporal.weights import share_weights

    return {**config, "_weights": share_weights(weights, config["model"]["name"])}


def make_task(config: dict):
    return {"video": VideoTask, "points": PointsTask}[config["task"]](config)


def _rank_shard(size: int, rank: int, world: int) -> list[int]:
    return list(range(rank, size, world))


class VideoTask:
    def __init__(self, config: dict):
        self.config = config
        self.spec = get_spec(config["model"]["name"])
        data = config["data"]
        # The model's frames: its kwargs' (a release's own, merged in by load_config), else the spec's.
        model_frames = canonical_kwargs(self.spec, config["model"]["kwargs"]).get("num_frames")
        self.num_frames = data["num_frames"] or model_frames or self.spec.num_frames
        self.frame_stride = data["frame_stride"] or self.spec.frame_stride
        self.crop_size = data["crop_size"] or self.spec.crop_size
        self.short_side = data["short_side"] or self.crop_size
        from spatiotemporal.train.config import parse_views

        protocol = self.spec.protocol
        views = parse_views(config["eval"]["views"]) or (protocol.temporal_views, protocol.spatial_crops)
        self.temporal_views, self.spatial_crops = views
        self.aggregation = config["eval"]["aggregation"] or protocol.aggregation
        self.test_short_side = config["eval"]["short_side"] or self._protocol_short_side()
        self._classes = None

    def _protocol_short_side(self) -> int:
        """The paper's test resize holds for the paper's crop; a config that crops at another size
        keeps its own geometry (data.short_side)."""
        protocol = self.spec.protocol
        if protocol.short_side is not None and self.crop_size == self.spec.crop_size:
            return protocol.short_side
        return self.short_side

    # -- data

    def dataset_at(self, path: str | Path, mode: str, split: str | None = None):
        """A KineticsDataset from an annotation file (official CSV or `path label` list) or a
        directory: `<split>.csv` (val: also `validate.csv`), `<split>.txt`, or `<split>/<class>/` folders."""
        from spatiotemporal.data.kinetics import ClipSampling, KineticsDataset
        from spatiotemporal.data.transforms import ClipTransform
        from spatiotemporal.io.errors import InputError

        data = self.config["data"]
        pre = self.spec.preprocess
        transform = ClipTransform(
            crop_size=self.crop_size,
            train_short_side=(self.short_side, int(round(self.short_side * 1.25))),
            test_short_side=self.test_short_side,
            hflip=data["augment"] and data["hflip"],
            num_crops=self.spatial_crops,
            mean=pre.mean,
            std=pre.std,
            geometry=self.spec.protocol.geometry,
        )
        kwargs = dict(
            mode=mode,
            clip=ClipSampling(num_frames=self.num_frames, stride=self.frame_stride, num_clips=self.temporal_views,
                              anchor=self.spec.protocol.anchor, anchor_fps=self.spec.protocol.target_fps,
                              train_as_anchor=data["train_sampling"] == "protocol"),
            transform=transform,
            seed=self.config["seed"],
        )
        path = Path(path)
        if path.is_file():
            if path.suffix == ".csv":
                dataset = KineticsDataset.from_csv(path, path.parent, **kwargs)
            else:
                dataset = KineticsDataset.from_list_file(path, path.parent, **kwargs)
        elif path.is_dir():
            names = [f"{split}.csv", "validate.csv" if split == "val" else None, f"{split}.txt"] if split else []
            found = next((path / n for n in names if n and (path / n).is_file()), None)
            classes = path / "classes.json" if (path / "classes.json").is_file() else None
            if found is not None and found.suffix == ".csv":
                dataset = KineticsDataset.from_csv(found, path, **kwargs)
            elif found is not None:
                dataset = KineticsDataset.from_list_file(found, path, **kwargs)
            elif split and (path / split).is_dir():
                dataset = KineticsDataset.from_folders(path / split, classes=classes, **kwargs)
            else:
                dataset = KineticsDataset.from_folders(path, classes=classes, **kwargs)
        else:
            raise InputError(path, "no such annotation file or directory")
        self._classes = dataset.classes
        return dataset

    def _dataset(self, split: str, mode: str):
        return self.dataset_at(self.config["data"]["root"], mode, split)

    def train_set(self):
        dataset = self._dataset(self.config["data"]["train_split"], "train")
        return CachedClips(dataset) if self.config["data"]["cache"] else dataset

    @property
    def num_classes(self) -> int:
        configured = self.config["model"]["num_classes"]
        if configured:
            return configured
        if self._classes is None:
            self.train_set()
        return len(self._classes)

    @property
    def class_names(self) -> list[str]:
        if self._classes is None:
            self.train_set()
        return list(self._classes.names)

    def model_meta(self) -> dict:
        """What a checkpoint records for inference: the clips this run trains and tests on."""
        return {"clip": {"num_frames": self.num_frames, "frame_stride": self.frame_stride,
                         "crop_size": self.crop_size, "short_side": self.test_short_side}}

    def build_model(self):
        return build_configured_model(self.config, self.num_classes)

    @staticmethod
    def collate(samples: list[dict]) -> dict:
        return {
            "video": torch.stack([s["video"] for s in samples]),
            "label": torch.tensor([s["label"] for s in samples]),
            "key": [s["key"] for s in samples],
            "error": [s["error"] for s in samples],
        }

    @staticmethod
    def to_device(batch: dict, device) -> dict:
        return {**batch, "video": batch["video"].to(device), "label": batch["label"].to(device)}

    # -- training

    def train_loss(self, model, batch: dict, rng: np.random.Generator):
        t = self.config["train"]
        clips, labels = batch["video"], batch["label"]
        smoothing = t["label_smoothing"]
        if t["mixup_alpha"] > 0 or t["cutmix_alpha"] > 0:
            from spatiotemporal.data.transforms import MixupConfig, mixup_cutmix

            mix = MixupConfig(t["mixup_alpha"], t["cutmix_alpha"], 0.5, t["mix_prob"], smoothing)
            clips, targets = mixup_cutmix(clips, labels, self.num_classes, rng, mix)
            logits = model(clips)
            loss = torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        else:
            logits = model(clips)
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
        correct = int((logits.argmax(-1) == labels).sum())
        return loss, correct, len(labels)

    # -- evaluation

    @torch.no_grad()
    def evaluate(self, model, rank: int, world: int, report_dir: Path | None, data: str | Path | None = None) -> dict:
        """Multi-view evaluation of the val split (or of `data`); rank 0 writes the report."""
        summary = self.evaluate_summary(model, rank, world, data)
        if report_dir is not None and rank == 0:
            report_dir.mkdir(parents=True, exist_ok=True)
            summary.to_json(report_dir / "eval_kinetics.json")
            (report_dir / "eval_kinetics.md").write_text(summary.to_markdown() + "\n")
            summary.plot_confusion(report_dir / "confusion.png")
        return {
            "top1": summary.top1,
            "top5": summary.top5,
            "top1_all": summary.top1_all,
            "mean_class_accuracy": summary.mean_class_accuracy,
            "num_evaluated": summary.num_evaluated,
        }

    @torch.no_grad()
    def evaluate_summary(self, model, rank: int = 0, world: int = 1, data: str | Path | None = None):
        from tqdm import tqdm

        from spatiotemporal.eval.kinetics import KineticsEvaluator

        if data is None:
            dataset = self._dataset(self.config["data"]["val_split"], "test")
        else:
            dataset = self.dataset_at(data, "test", self.config["data"]["val_split"])
        views = self.temporal_views * self.spatial_crops
        evaluator = KineticsEvaluator(
            len(dataset.classes), views, self.aggregation, class_names=list(dataset.classes.names)
        )
        if rank == 0:
            for entry in dataset.report.missing:
                evaluator.mark_missing(entry["key"], entry["reason"])
        # A padding sampler, as DDP evaluation usually uses; the evaluator drops the repeats.
        sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=False)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.config["eval"]["batch_size"], sampler=sampler, collate_fn=self.collate,
            num_workers=self.config["data"]["loader_workers"],
        )  # fmt: skip
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        # disable=None: no bar where stderr is no terminal, as in a Ray worker (fit draws the run's bar).
        for batch in tqdm(loader, desc="eval kinetics", disable=None if rank == 0 else True, leave=False):
            ok = [i for i, e in enumerate(batch["error"]) if not e]
            for i, error in enumerate(batch["error"]):
                if error:
                    evaluator.mark_missing(batch["key"][i], error, int(batch["label"][i]))
            if not ok:
                continue
            video = batch["video"][ok].to(device)
            b = video.shape[0]
            logits = model(video.flatten(0, 1)).float().view(b, views, -1)
            evaluator.update([batch["key"][i] for i in ok], logits, batch["label"][ok])
        model.train(was_training)
        evaluator.gather()
        return evaluator.summary()


class CachedClips(torch.utils.data.Dataset):
    """Training clips cut from whole videos decoded once and kept in memory, for datasets small
    enough to fit (synthetic Kinetics): decoding, not the model, dominates a tiny model's step.

    Clips and augmentation are drawn exactly as `KineticsDataset` draws them, from the same
    (seed, epoch, index) generator, so caching changes speed, not samples.
    """

    def __init__(self, dataset):
        self.dataset = dataset
        # index -> (frames, the video's fps, frame times when clips are sampled by time)
        self.videos: dict[int, tuple[torch.Tensor, float, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def _video(self, index: int) -> tuple[torch.Tensor, float, np.ndarray | None]:
        from spatiotemporal.io.video import VideoReader

        if index not in self.videos:
            d = self.dataset
            with VideoReader(d.records[index].path, backend=d.backend, short_side=d.decode_short_side) as reader:
                stamps = reader.frame_timestamps() if d.clip.target_fps is not None else None
                self.videos[index] = (reader.read_all(), reader.metadata.fps, stamps)
        return self.videos[index]

    def _clip(self, index: int, rng: np.random.Generator) -> torch.Tensor:
        d = self.dataset
        frames, fps, stamps = self._video(index)
        indices = d.clip.train_indices(rng, len(frames), fps, lambda: stamps)
        return d.transform.train(frames[torch.from_numpy(indices)], rng)

    def __getitem__(self, index: int) -> dict:
        return self.dataset.train_item(index, self._clip)


class PointScenes(torch.utils.data.Dataset):
    """ScanNet training scenes: augmented, voxelised (one random point per voxel) and cropped,
    with every random draw seeded from (seed, epoch, index)."""

    def __init__(self, root: Path, split: str, config: dict):
        from spatiotemporal.data.scannet import ScanNetDataset

        self.scenes = ScanNetDataset(root, split)
        self.config = config
        self.seed = config["seed"]
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.scenes)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        from spatiotemporal.data import point_transforms as T

        data = self.config["data"]
        g = torch.Generator().manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
        steps = [T.CenterShift(apply_z=True)]
        if data["augment"]:
            steps += [
                T.RandomRotate(axis="z", generator=g),
                T.RandomScale(generator=g),
                T.RandomFlip(generator=g),
                T.RandomJitter(generator=g),
            ]
        steps += [T.GridSample(data["grid_size"], "train", generator=g), T.SphereCrop(data["max_points"], generator=g)]
        steps += [T.CenterShift(apply_z=False), T.NormalizeColor()]
        return T.Compose(steps)(self.scenes.load(index))


class PointsTask:
    def __init__(self, config: dict):
        self.config = config
        self.spec = get_spec(config["model"]["name"])

    @property
    def num_classes(self) -> int:
        from spatiotemporal.data.scannet import CLASS_NAMES

        return self.config["model"]["num_classes"] or len(CLASS_NAMES)

    @property
    def class_names(self) -> list[str]:
        """One name per output of the head: ScanNet's 20 for a 20-class head (the labels this task's
        data carry), else class_<i>, as inference names an unnamed head's classes."""
        from spatiotemporal.data.scannet import CLASS_NAMES
        from spatiotemporal.meta import head_class_names

        return head_class_names(self.num_classes, label_sets=[CLASS_NAMES])

    def model_meta(self) -> dict:
        """What a checkpoint records for inference: the voxel size the points were sampled at."""
        return {"grid_size": self.config["data"]["grid_size"]}

    def build_model(self):
        return build_configured_model(self.config, self.num_classes)

    def train_set(self):
        data = self.config["data"]
        return PointScenes(Path(data["root"]), data["train_split"], self.config)

    @staticmethod
    def collate(clouds: list[dict]) -> dict:
        # Every per-point input any model takes; `train_loss` picks the model's own features.
        keys = [key for key in ("coord", "color", "normal") if key in clouds[0]]
        batch = {key: torch.cat([c[key] for c in clouds]).float() for key in keys}
        batch["segment"] = torch.cat([c["segment"] for c in clouds]).long()
        batch["offset"] = torch.tensor([len(c["coord"]) for c in clouds]).cumsum(0)
        return batch

    @staticmethod
    def to_device(batch: dict, device) -> dict:
        return {k: v.to(device) for k, v in batch.items()}

    def train_loss(self, model, batch: dict, rng: np.random.Generator):
        logits = model(batch["coord"], point_features(batch, point_feature_keys(model)), batch["offset"])
        loss = F.cross_entropy(logits.float(), batch["segment"], ignore_index=-1)
        lovasz_weight = self.config["train"]["lovasz_weight"]
        if lovasz_weight:
            from spatiotemporal.train.losses import lovasz_softmax

            loss = loss + lovasz_weight * lovasz_softmax(logits, batch["segment"], ignore_index=-1)
        valid = batch["segment"] >= 0
        correct = int((logits.argmax(-1)[valid] == batch["segment"][valid]).sum())
        return loss, correct, int(valid.sum())

    def evaluate(self, model, rank: int, world: int, report_dir: Path | None) -> dict:
        summary = self.evaluate_summary(model, rank, world, report_dir)
        return {"miou": summary.miou, "macc": summary.macc, "overall_accuracy": summary.overall_accuracy}

    @torch.no_grad()
    def evaluate_summary(self, model, rank: int = 0, world: int = 1, report_dir: Path | None = None):
        """Full-resolution evaluation of the val split; with `report_dir`, submission files,
        the per-class table and a top-down PNG are written there."""
        from tqdm import tqdm

        from spatiotemporal.data.scannet import ScanNetDataset
        from spatiotemporal.eval.scannet import (
            ScanNetEvaluator,
            pointcept_test_augmentations,
            predict_scene,
            train_to_nyu40,
            write_submission,
        )

        data = self.config["data"]
        scenes = ScanNetDataset(Path(data["root"]), data["val_split"])
        evaluator = ScanNetEvaluator()
        augmentations = pointcept_test_augmentations() if self.config["eval"]["tta"] else None
        was_training = model.training
        model.eval()
        first = None
        # disable=None: no bar where stderr is no terminal, as in a Ray worker (fit draws the run's bar).
        for index in tqdm(_rank_shard(len(scenes), rank, world), desc="eval scannet", disable=None if rank == 0 else True, leave=False):
            cloud = scenes.load(index)
            name = cloud.pop("name")
            pred, _ = predict_scene(model, cloud, data["grid_size"], name=name, augmentations=augmentations)
            evaluator.update_train_ids(pred, cloud["segment"], name)
            if report_dir is not None:
                write_submission(report_dir / "submission" / f"{name}.txt", train_to_nyu40(pred))
                if first is None:
                    first = (name, cloud["coord"], pred, cloud["segment"])
        model.train(was_training)
        evaluator.gather()
        summary = evaluator.summary()
        if report_dir is not None and rank == 0:
            from spatiotemporal.eval.plots import plot_scene_top_down

            summary.to_json(report_dir / "eval_scannet.json")
            (report_dir / "eval_scannet.md").write_text(summary.to_markdown() + "\n")
            if first is not None:
                name, coord, pred, gt = first
                plot_scene_top_down(coord, pred, gt, report_dir / f"{name}_top_down.png", title=name)
        return summary
