"""The catalogue of published checkpoints: data only, one entry per released file.

Every fact here was read from the publisher's own page, named in `source_page`: torchvision's weight
enums (torchvision 0.29.1, `torchvision/models/video/{mvit,swin_transformer}.py`), the model-zoo
tables of facebookresearch/TimeSformer (README), facebookresearch/SlowFast (projects/mvitv2/README.md)
and SwinTransformer/Video-Swin-Transformer (README), and the READMEs of Pointcept and
dvlab-research/Stratified-Transformer. `confirmed=False` marks an entry with something this
catalogue could not check from here (no network): `note` says what.

SHA-256: torchvision puts the first 8 hex digits of a file's SHA-256 in its name, and torch.hub
checks that prefix; no other publisher here gives a hash. An entry without one is verified on
first download against nothing, and the digest of what arrived is recorded beside the file
(trust on first use), which `spatiotemporal weights verify` checks from then on.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Published:
    """The accuracy a checkpoint is published at, and how it was measured."""

    dataset: str  # "Kinetics-400", "Kinetics-600", "Something-Something-v2", "ScanNet v2 val"
    metric: str  # "top-1" or "mIoU"
    value: float  # percent
    protocol: str  # views x crops, aggregation, crop/short side: what the figure assumes
    reference: str  # the table the figure comes from


@dataclass(frozen=True)
class WeightsEntry:
    name: str  # "<model>.<tag>", e.g. "mvitv2_s.k400"
    model: str  # a registered model name
    kind: str  # "url" (a plain file), "hf" (a hub repo), or "unavailable" (no file a client can fetch)
    classes: str  # "kinetics400", "kinetics600", "ssv2", "scannet20", "s3dis13"
    num_classes: int
    source_page: str  # where the facts below were read
    licence: str
    published: Published | None = None
    url: str = ""  # kind "url"
    hf_repo: str = ""  # kind "hf": repo id, revision and the files the converter needs
    hf_revision: str = "main"
    hf_files: tuple[str, ...] = ()
    sha256: str = ""  # the full digest, or the prefix torchvision publishes; "" when none is published
    size_mib: float | None = None
    num_params: int | None = None
    layout: str = ""  # the checkpoint layout spatiotemporal.convert reads it as
    model_kwargs: dict = field(default_factory=dict)  # where the release differs from the spec (frames)
    confirmed: bool = True
    note: str = ""

    @property
    def tag(self) -> str:
        return self.name.split(".", 1)[1]

    @property
    def downloadable(self) -> bool:
        return self.kind in ("url", "hf")

    @property
    def filename(self) -> str:
        """The file the weights are read from: the URL's last part, or the hub repo's weights file."""
        if self.kind == "url":
            return self.url.split("?", 1)[0].rsplit("/", 1)[-1]
        if self.kind == "hf":
            return self.hf_files[0]
        return ""

    @property
    def location(self) -> str:
        """Where the file comes from, as a URL a person can open."""
        if self.kind == "url":
            return self.url
        if self.kind == "hf":
            return f"https://huggingface.co/{self.hf_repo}/resolve/{self.hf_revision}/{self.hf_files[0]}"
        return self.source_page


# ----------------------------------------------------------------------------- torchvision

_TV = "torchvision 0.29.1 weight enums (torchvision/models/video/{file})"
_TV_MVIT_PROTOCOL = "torchvision's video-level estimate: 5 clips of 16 frames at 7.5 fps, 1 centre crop 224, resize 256"
_TV_SWIN_PROTOCOL = "torchvision's video-level estimate: 12 clips of 32 frames at 15 fps, 1 centre crop 224, resize 256"
_TV_LICENCE = "not stated by torchvision; ported from the authors' release ({origin})"


def _torchvision(name, model, enum, url, prefix, top1, size_mib, num_params, file, protocol, origin, note=""):
    return WeightsEntry(
        name=name, model=model, kind="url", classes="kinetics400", num_classes=400,
        source_page=_TV.format(file=file), licence=_TV_LICENCE.format(origin=origin),
        published=Published("Kinetics-400", "top-1", top1, protocol, f"torchvision {enum} meta _metrics acc@1"),
        url=url, sha256=prefix, size_mib=size_mib, num_params=num_params, layout="torchvision", note=note,
    )


TORCHVISION = (
    _torchvision("mvitv2_s.k400", "mvitv2_s", "MViT_V2_S_Weights.KINETICS400_V1",
                 "https://download.pytorch.org/models/mvit_v2_s-ae3be167.pth", "ae3be167", 80.757, 131.884,
                 34537744, "mvit.py", _TV_MVIT_PROTOCOL, "SlowFast, Apache-2.0 code"),
    _torchvision("swin3d_t.k400", "swin3d_t", "Swin3D_T_Weights.KINETICS400_V1",
                 "https://download.pytorch.org/models/swin3d_t-7615ae03.pth", "7615ae03", 77.715, 121.543,
                 28158070, "swin_transformer.py", _TV_SWIN_PROTOCOL, "Video-Swin-Transformer, Apache-2.0 code"),
    _torchvision("swin3d_s.k400", "swin3d_s", "Swin3D_S_Weights.KINETICS400_V1",
                 "https://download.pytorch.org/models/swin3d_s-da41c237.pth", "da41c237", 79.521, 218.288,
                 49816678, "swin_transformer.py", _TV_SWIN_PROTOCOL, "Video-Swin-Transformer, Apache-2.0 code"),
    _torchvision("swin3d_b.k400", "swin3d_b", "Swin3D_B_Weights.KINETICS400_V1",
                 "https://download.pytorch.org/models/swin3d_b_1k-24f7c7c6.pth", "24f7c7c6", 79.427, 364.134,
                 88048984, "swin_transformer.py", _TV_SWIN_PROTOCOL, "Video-Swin-Transformer, Apache-2.0 code"),
    _torchvision("swin3d_b.k400_in22k", "swin3d_b", "Swin3D_B_Weights.KINETICS400_IMAGENET22K_V1",
                 "https://download.pytorch.org/models/swin3d_b_22k-7c6ae6fa.pth", "7c6ae6fa", 81.643, 364.134,
                 88048984, "swin_transformer.py", _TV_SWIN_PROTOCOL, "Video-Swin-Transformer, Apache-2.0 code",
                 note="ImageNet-22K pre-training, then Kinetics-400"),
)

# ----------------------------------------------------------------------------- TimeSformer

_TSF_PAGE = "facebookresearch/TimeSformer README.md, Model Zoo"
_TSF_LICENCE = "CC BY-NC 4.0 (TimeSformer README, License)"
_TSF_PROTOCOL = "1 clip x 3 spatial crops, logits summed (TimeSformer's test); crop {crop}, {frames} frames"
_TSF_DATASETS = {"k400": ("Kinetics-400", "kinetics400", 400), "k600": ("Kinetics-600", "kinetics600", 600),
                 "ssv2": ("Something-Something-v2", "ssv2", 174)}
# (model, dataset, frames, crop, published top-1, the release's Dropbox link as its README gives it)
_TSF_RELEASES = (
    ("timesformer_base", "k400", 8, 224, 77.9, "https://www.dropbox.com/s/g5t24we9gl5yk88/TimeSformer_divST_8x32_224_K400.pyth"),
    ("timesformer_hr", "k400", 16, 448, 79.6, "https://www.dropbox.com/s/6f0x172lpqy3oxt/TimeSformer_divST_16x16_448_K400.pyth"),
    ("timesformer_large", "k400", 96, 224, 80.6, "https://www.dropbox.com/s/r1iuxahif3sgimo/TimeSformer_divST_96x4_224_K400.pyth"),
    ("timesformer_base", "k600", 8, 224, 79.1, "https://www.dropbox.com/s/4h2qt41m2z3aqrb/TimeSformer_divST_8x32_224_K600.pyth"),
    ("timesformer_hr", "k600", 16, 448, 81.8, "https://www.dropbox.com/s/ft1e92g2vhvxecv/TimeSformer_divST_16x16_448_K600.pyth"),
    ("timesformer_large", "k600", 96, 224, 82.2, "https://www.dropbox.com/s/857rx6xeclxfhdg/TimeSformer_divST_96x4_224_K600.pyth"),
    ("timesformer_base", "ssv2", 8, 224, 59.1, "https://www.dropbox.com/s/tybhuml57y24wpm/TimeSformer_divST_8_224_SSv2.pyth"),
    ("timesformer_hr", "ssv2", 16, 448, 61.8, "https://www.dropbox.com/s/9t68uzk8w2fpfnv/TimeSformer_divST_16_448_SSv2.pyth"),
    ("timesformer_large", "ssv2", 64, 224, 62.0, "https://www.dropbox.com/s/3f1rm2al8mhprwa/TimeSformer_divST_64_224_SSv2.pyth"),
)
_HF_SIZE = {"timesformer_base": "base", "timesformer_hr": "hr", "timesformer_large": "large"}
_SPEC_FRAMES = {"timesformer_base": 8, "timesformer_hr": 16, "timesformer_large": 96}


def _timesformer_entries():
    for model, dataset, frames, crop, top1, link in _TSF_RELEASES:
        label, classes, count = _TSF_DATASETS[dataset]
        published = Published(label, "top-1", top1, _TSF_PROTOCOL.format(crop=crop, frames=frames),
                              "TimeSformer README model zoo (retrained release; the paper's Table 7 differs slightly)")
        kwargs = {"num_frames": frames} if frames != _SPEC_FRAMES[model] else {}
        yield WeightsEntry(
            name=f"{model}.{dataset}", model=model, kind="url", classes=classes, num_classes=count,
            source_page=_TSF_PAGE, licence=_TSF_LICENCE, published=published,
            # The README links Dropbox share pages (?dl=0, an HTML preview); ?dl=1 is Dropbox's
            # direct-download form of the same link.
            url=link + "?dl=1", layout="official-timesformer", model_kwargs=kwargs, confirmed=False,
            note="link from the README (its ?dl=0 share page, fetched as ?dl=1); no hash published",
        )
        yield WeightsEntry(
            name=f"{model}.{dataset}_hf", model=model, kind="hf", classes=classes, num_classes=count,
            source_page=f"https://huggingface.co/facebook/timesformer-{_HF_SIZE[model]}-finetuned-{dataset}",
            licence=_TSF_LICENCE, published=published,
            hf_repo=f"facebook/timesformer-{_HF_SIZE[model]}-finetuned-{dataset}",
            hf_files=("pytorch_model.bin", "config.json"), layout="hf-transformers", model_kwargs=kwargs,
            confirmed=False,
            note="the hub repo converts the official release (figure is the release's); revision not pinned "
                 "and file names not checked from here",
        )


TIMESFORMER = tuple(_timesformer_entries())

# ----------------------------------------------------------------------------- ViViT

VIVIT = (
    WeightsEntry(
        name="vivit_b_joint.k400_hf", model="vivit_b_joint", kind="hf", classes="kinetics400", num_classes=400,
        source_page="https://huggingface.co/google/vivit-b-16x2-kinetics400", licence="not confirmed here (see the model card)",
        hf_repo="google/vivit-b-16x2-kinetics400", hf_files=("pytorch_model.bin", "config.json"),
        layout="hf-transformers", confirmed=False,
        note="no published accuracy for this exact checkpoint was confirmed here; revision not pinned and "
             "file names not checked from here",
    ),
)

# ----------------------------------------------------------------------------- MViTv2 (SlowFast)

_SF_PAGE = "facebookresearch/SlowFast projects/mvitv2/README.md, Kinetics-400"
_SF_PROTOCOL = "1 crop x 5 clips ('Flops x views' column), softmax averaged (SlowFast's test)"
MVIT = tuple(
    WeightsEntry(
        name=f"{model}.k400_slowfast", model=model, kind="url", classes="kinetics400", num_classes=400,
        source_page=_SF_PAGE, licence="Apache-2.0 (SlowFast)",
        published=Published("Kinetics-400", "top-1", top1, _SF_PROTOCOL, "MViTv2 README table (= paper Table 3)"),
        url=url, layout="slowfast", confirmed=True, note="no hash published (the f-number in the name is a run id)",
    )
    for model, top1, url in (
        ("mvitv2_s", 81.0, "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/mvitv2/pysf_video_models/MViTv2_S_16x4_k400_f302660347.pyth"),
        ("mvitv2_b", 82.9, "https://dl.fbaipublicfiles.com/pyslowfast/model_zoo/mvitv2/pysf_video_models/MViTv2_B_32x3_k400_f304025456.pyth"),
    )
)

# ----------------------------------------------------------------------------- Video Swin (official)

_VS_PAGE = "SwinTransformer/Video-Swin-Transformer README.md, Results and Models"
_VS_PROTOCOL = "4 clips x 3 crops of 224 at short side 224, softmax averaged (mmaction2 0.x test config)"
_VS_STORAGE = "https://github.com/SwinTransformer/storage/releases/download/v1.0.4/"
VIDEO_SWIN = tuple(
    WeightsEntry(
        name=f"{model}.{tag}", model=model, kind="url", classes=classes, num_classes=count,
        source_page=_VS_PAGE, licence="Apache-2.0 (Video-Swin-Transformer)",
        published=Published(dataset, "top-1", top1, _VS_PROTOCOL, "Video Swin README table (= paper Tables 1-2)"),
        url=_VS_STORAGE + file, layout="videoswin", note=f"no hash published; pre-trained on {pretrain}",
    )
    for model, tag, classes, count, dataset, top1, pretrain, file in (
        ("swin3d_t", "k400_official", "kinetics400", 400, "Kinetics-400", 78.8, "ImageNet-1K",
         "swin_tiny_patch244_window877_kinetics400_1k.pth"),
        ("swin3d_s", "k400_official", "kinetics400", 400, "Kinetics-400", 80.6, "ImageNet-1K",
         "swin_small_patch244_window877_kinetics400_1k.pth"),
        ("swin3d_b", "k400_official", "kinetics400", 400, "Kinetics-400", 80.6, "ImageNet-1K",
         "swin_base_patch244_window877_kinetics400_1k.pth"),
        ("swin3d_b", "k400_in22k_official", "kinetics400", 400, "Kinetics-400", 82.7, "ImageNet-22K",
         "swin_base_patch244_window877_kinetics400_22k.pth"),
        ("swin3d_b", "k600_in22k_official", "kinetics600", 600, "Kinetics-600", 84.0, "ImageNet-22K",
         "swin_base_patch244_window877_kinetics600_22k.pth"),
    )
)

# ----------------------------------------------------------------------------- point models

# The Stratified Transformer authors' releases: where they are and why no client can fetch them.
_STRATIFIED_RELEASE = dict(
    source_page="dvlab-research/Stratified-Transformer README.md, Pre-trained Models",
    licence="not stated in the README", confirmed=False,
    note="not downloadable by a client: the authors share weights in a SharePoint folder (no direct file "
         "URL); download it by hand and pass --checkpoint",
)

POINTS = (
    WeightsEntry(
        name="point_transformer.scannet", model="point_transformer", kind="unavailable", classes="scannet20",
        num_classes=20, source_page="Pointcept/Pointcept README.md, Point Transformers (PTv1)",
        licence="MIT (Pointcept code)", confirmed=False,
        note="not downloadable: Pointcept gives PTv1 training scripts but releases no PTv1 weights (its "
             "released weights are PTv3's); train one and pass --checkpoint",
    ),
    WeightsEntry(
        name="stratified_transformer.scannet", model="stratified_transformer", kind="unavailable",
        classes="scannet20", num_classes=20,
        **_STRATIFIED_RELEASE,
    ),
    WeightsEntry(
        name="stratified_transformer_s3dis.s3dis", model="stratified_transformer_s3dis", kind="unavailable",
        classes="s3dis13", num_classes=13,
        **_STRATIFIED_RELEASE,
    ),
)

ENTRIES: tuple[WeightsEntry, ...] = TORCHVISION + MVIT + VIDEO_SWIN + TIMESFORMER + VIVIT + POINTS

CLASS_COUNTS = {"kinetics400": 400, "kinetics600": 600, "ssv2": 174, "scannet20": 20, "s3dis13": 13}
