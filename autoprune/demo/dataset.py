"""A generated object-detection dataset: the demo task every autoprune command uses when no `--data` is given.

Why a generated dataset: autoprune must run offline, with nothing to download, and a pruning search needs a task on
which damage to the model shows. The task is built to be a real detection problem, not a toy:

- 8 classes of drawn objects told apart by **shape only** (colour and fill are drawn independently of the class):
  ellipse, triangle, rectangle, hexagon, star, cross, ring, arrow. Some pairs are close on purpose (hexagon /
  ellipse, star / cross, triangle / arrow head, ring / ellipse when small or blurred).
- Varied scale (object radius log-uniform over about 7..70 px at 320 px), rotation, aspect, fill (solid, gradient,
  stripes, checker, noise), outlines, per-object shading, low-contrast objects.
- Overlap and occlusion: objects and distractors are drawn in sequence and later ones hide earlier ones; objects are
  also cut by the image border.
- Clutter: unlabelled distractors that look like objects (irregular blobs, spiky polygons, crescents, glyphs,
  strokes) drawn among the objects, and small clutter on the background.
- Varied backgrounds: random crops, flips and colour jitter of the two photos that ship inside Ultralytics
  (`assets/bus.jpg`, `assets/zidane.jpg`), and procedural textures (noise fields, stripes, grids, gradients).
- Image-level degradation: uneven lighting, gamma, blur (Gaussian or motion), sensor noise, JPEG compression.

Labels (YOLO format, one `class cx cy w h` line per object, normalised): the box is the tight box of the object's
**visible** pixels (after occlusion by later objects and clipping at the image border), measured on the drawn mask
before blur. An object is only kept (and labelled) if at least `MIN_VISIBLE` of its drawn area stays visible: a
placement that would hide more of an earlier object, or leave a new object more than that far outside the image, is
rejected and redrawn elsewhere. So every visible object is labelled and no label points at a hidden one.

The same scenes come with other tasks' labels too (`generate(task=...)`): each object's visible mask as a polygon
(segment), its four extreme points as keypoints (pose) or its rotated box (obb); the images are the same bytes. For
classification (classify), each labelled object is cut out of its scene (`object_crop`) and filed under its class.

Generation is a pure function of (seed, split, image index): each image has its own random generator, so a dataset
is byte-identical for the same arguments, whatever the order or number of processes that write it.

Example:
    >>> from autoprune.demo.dataset import generate
    >>> yaml_path = generate("/tmp/shapes", n_train=16, n_val=8, seed=0, imgsz=320)
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from autoprune.progress import Progress

CLASS_NAMES = ("ellipse", "triangle", "rectangle", "hexagon", "star", "cross", "ring", "arrow")
GENERATOR_VERSION = 1  # bump when the drawing changes, so cached datasets are regenerated
MIN_VISIBLE = 0.5  # smallest visible fraction of an object's drawn area for it to be placed (and labelled)
MIN_BOX_PX = 4  # smallest visible box side in pixels
MIN_CROP_PX = 24  # smallest classification crop side (Ultralytics drops images under 10 px as corrupt)
_SPLITS = {"train": 0, "val": 1}
TASKS = ("detect", "segment", "pose", "obb", "classify")  # the label kinds `generate` writes
# The pose labels' keypoints: each object's extreme visible points (`extreme_points`), clockwise from the top, and
# the order a horizontal flip puts them in (left and right trade places), as Ultralytics' pose data YAML gives it.
KEYPOINTS = ("top", "right", "bottom", "left")
FLIP_IDX = (0, 3, 2, 1)

# Aspect (minor / major scale) range per class: a wide range where the class stays unambiguous.
_ASPECT = {0: (0.5, 1.0), 1: (0.7, 1.0), 2: (0.45, 1.0), 3: (0.8, 1.0), 4: (0.8, 1.0), 5: (0.75, 1.0),
           6: (0.7, 1.0), 7: (0.75, 1.0)}  # fmt: skip
_GLYPHS = "ABEFGHKLMNPRSUWYZ34569&%#?@"  # no O/0/Q/D (rings), X/+ (crosses), A-like triangles kept as clutter


def generate(root: str | Path, *, n_train: int, n_val: int, seed: int = 0, imgsz: int = 320,
             task: str = "detect") -> Path:
    """Write a dataset of `n_train` + `n_val` images of `imgsz` x `imgsz` into `root` and return its data YAML.

    `task` 'detect' writes box labels (`cls cx cy w h`); the other tasks write the same images with Ultralytics'
    labels of that task:

    - 'segment': each object's visible mask as one polygon (`cls x1 y1 x2 y2 ...`, `mask_polygon`);
    - 'pose': the box and the object's four extreme visible points (`cls cx cy w h x1 y1 v1 ... x4 y4 v4`,
      `extreme_points`, all visible: v = 2), and `kpt_shape: [4, 3]` and `flip_idx` in the data YAML;
    - 'obb': the object's rotated box, corner by corner (`cls x1 y1 x2 y2 x3 y3 x4 y4`, `rotated_box`).

    `root` must not exist or be empty. The layout is Ultralytics' (`images/{train,val}`, `labels/{train,val}`,
    `data.yaml`); the YAML has no `path:` key, so Ultralytics resolves the splits next to the YAML and the folder
    can be renamed after it is written (which `ensure_demo_data` relies on).

    'classify' writes no labels and no YAML: each labelled object of each scene, cut out as `object_crop` does, is
    an image of its class in Ultralytics' classification layout, `root/{train,val}/<class name>/<scene>_<k>.jpg`
    (every class has its folder in both splits, even an empty one), and `root` itself is returned: the folder is
    what Ultralytics' `data=` takes for a classification dataset.

    Example:
        >>> generate("/tmp/shapes", n_train=16, n_val=8, seed=0, imgsz=320).name
        'data.yaml'
    """
    root = Path(root)
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train}, {n_val}")
    if imgsz < 64:
        raise ValueError(f"imgsz must be >= 64, got {imgsz}")
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    if root.exists() and any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty")
    if task == "classify":
        return _generate_crops(root, n_train=n_train, n_val=n_val, seed=seed, imgsz=imgsz)
    with Progress(f"generating the demo dataset in {root.parent}", total=n_train + n_val, unit="images") as bar:
        for split, n in (("train", n_train), ("val", n_val)):
            img_dir, lbl_dir = root / "images" / split, root / "labels" / split
            img_dir.mkdir(parents=True, exist_ok=True)
            lbl_dir.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img, quality, labels, objects = render_objects(seed, split, i, imgsz)
                ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
                assert ok
                (img_dir / f"{i:05d}.jpg").write_bytes(buf.tobytes())
                lines = [_label_line(task, label, obj, imgsz) for label, obj in zip(labels, objects)]
                (lbl_dir / f"{i:05d}.txt").write_text("".join(line + "\n" for line in lines))
                bar.update()
    names = "".join(f"  {i}: {n}\n" for i, n in enumerate(CLASS_NAMES))
    keypoints = (f"kpt_shape: [{len(KEYPOINTS)}, 3]  # {', '.join(KEYPOINTS)}: the extreme visible points\n"
                 f"flip_idx: [{', '.join(str(i) for i in FLIP_IDX)}]\n") if task == "pose" else ""
    yaml_path = root / "data.yaml"
    yaml_path.write_text(
        f"# autoprune demo dataset ({task} labels): generator v{GENERATOR_VERSION}, seed {seed}, {n_train} train / "
        f"{n_val} val images of {imgsz}x{imgsz}\ntrain: images/train\nval: images/val\nnc: {len(CLASS_NAMES)}\n"
        f"{keypoints}names:\n{names}"
    )
    return yaml_path


def _generate_crops(root: Path, *, n_train: int, n_val: int, seed: int, imgsz: int) -> Path:
    """`generate`'s classification dataset: the objects of the scenes, cropped (`object_crop`), one folder per
    class and split; returns `root`."""
    with Progress(f"generating the demo dataset in {root.parent}", total=n_train + n_val, unit="images") as bar:
        for split, n in (("train", n_train), ("val", n_val)):
            folders = [root / split / name for name in CLASS_NAMES]
            for folder in folders:
                folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                img, quality, labels, _ = render_objects(seed, split, i, imgsz)
                for k, label in enumerate(labels):
                    ok, buf = cv2.imencode(".jpg", object_crop(img, label), [cv2.IMWRITE_JPEG_QUALITY, quality])
                    assert ok
                    (folders[label[0]] / f"{i:05d}_{k}.jpg").write_bytes(buf.tobytes())
                bar.update()
    return root


def object_crop(img: np.ndarray, label: tuple, margin: float = 0.15) -> np.ndarray:
    """The square cut of `img` around a labelled object (`label`: cls, cx, cy, w, h normalised): its box's longer
    side plus `margin` of it on each side, at least `MIN_CROP_PX`, centred on the box, moved inside the image where
    it would leave it (and no larger than the image), so that the object is whole and other objects and clutter may
    show at the edges, as in a classification photo."""
    n = img.shape[0]
    _, cx, cy, w, h = label
    side = min(n, max(MIN_CROP_PX, round(max(w, h) * n * (1 + 2 * margin))))
    x0 = int(np.clip(round(cx * n - side / 2), 0, n - side))
    y0 = int(np.clip(round(cy * n - side / 2), 0, n - side))
    return img[y0 : y0 + side, x0 : x0 + side]


def _label_line(task: str, label: tuple, obj: DemoObject, imgsz: int) -> str:
    """One label line of an object in `task`'s format (see `generate`), coordinates normalised by `imgsz`."""
    c, cx, cy, w, h = label
    box = f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}"
    if task == "detect":
        return box
    if task == "segment":
        points = mask_polygon(obj.mask)
    elif task == "obb":
        points = rotated_box(obj.mask, obj.angle)
    else:
        return box + "".join(f" {x / imgsz:.6f} {y / imgsz:.6f} 2" for x, y in extreme_points(obj.mask))
    return f"{c} " + " ".join(f"{v / imgsz:.6f}" for v in points.ravel())


# ----------------------------------------------------------------------------------------------------------- images
@dataclass(frozen=True)
class DemoObject:
    """A labelled object of a demo image.

    Attributes:
        cls: class index (`CLASS_NAMES`).
        mask: its visible pixels (bool HxW), after occlusion by later objects and clipping at the image border: what
            every label of it (box, polygon, keypoints, rotated box) is measured on.
        angle: the rotation it was drawn at, radians, from the image's x axis towards its y axis (clockwise on
            screen, y down): its own x axis points along (cos angle, sin angle). An arrow points along it, a
            triangle has a vertex there, a rectangle's and a cross's sides and an ellipse's axes are parallel and
            perpendicular to it.
    """

    cls: int
    mask: np.ndarray
    angle: float


def render_image(seed: int, split: str, index: int, imgsz: int = 320, masks: bool = False):
    """Draw one image; return (BGR uint8 image, JPEG quality, labels as [(cls, cx, cy, w, h) normalised]), and with
    `masks` each label's visible mask too (bool HxW, the pixels its box is measured on)."""
    img, quality, labels, objects = render_objects(seed, split, index, imgsz)
    if masks:
        return img, quality, labels, [o.mask for o in objects]
    return img, quality, labels


def render_objects(seed: int, split: str, index: int, imgsz: int = 320):
    """Draw one image; return (BGR uint8 image, JPEG quality, labels as [(cls, cx, cy, w, h) normalised], the
    labelled objects as `DemoObject`s, one per label)."""
    rng = np.random.default_rng([seed, _SPLITS[split], index, GENERATOR_VERSION])
    s = imgsz / 320  # sizes below are given for 320 px images
    img = _background(rng, imgsz)
    _background_clutter(rng, img, s)

    objects = []  # labelled: dict(cls, vis (bool HxW), area)
    n_obj = int(rng.integers(2, 10))
    n_dis = int(rng.integers(1, 7))
    order = rng.permutation([1] * n_obj + [0] * n_dis)
    for is_obj in order:
        for _attempt in range(12):
            if is_obj:
                cls = int(rng.integers(len(CLASS_NAMES)))
                alpha, (x0, y0), angle = _object_alpha(rng, cls, s, imgsz)
            else:
                cls, angle = -1, 0.0
                alpha, (x0, y0) = _distractor_alpha(rng, s, imgsz)
            placed = _place(alpha, x0, y0, imgsz)
            if placed is None:
                continue
            full_area, full_mask, a_img, box = placed
            if cls >= 0 and full_mask.sum() < MIN_VISIBLE * full_area:
                continue  # too much of the new object outside the image
            if any((o["vis"] & ~full_mask).sum() < MIN_VISIBLE * o["area"] for o in objects):
                continue  # would hide too much of an earlier object
            if any(not _box_ok(o["vis"] & ~full_mask) for o in objects):
                continue
            if cls >= 0 and not _box_ok(full_mask):
                continue
            for o in objects:
                o["vis"] &= ~full_mask
            _paint(rng, img, a_img, box, s)
            if cls >= 0:
                objects.append({"cls": cls, "vis": full_mask, "area": full_area, "angle": angle})
            break

    img, quality = _degrade(rng, img, s)
    labels = []
    for o in objects:
        ys, xs = np.nonzero(o["vis"])
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        labels.append((o["cls"], (x0 + x1) / 2 / imgsz, (y0 + y1) / 2 / imgsz, (x1 - x0) / imgsz, (y1 - y0) / imgsz))
    return img, quality, labels, [DemoObject(o["cls"], o["vis"], o["angle"]) for o in objects]


def extreme_points(mask: np.ndarray) -> np.ndarray:
    """The four extreme points of a mask (4 x 2 pixel coordinates, pixel centres), in `KEYPOINTS` order: the middle
    pixel of its top row, of its rightmost column, of its bottom row and of its leftmost column. Each is a pixel of
    the mask, so it lies inside the object's box; they are what extreme clicking annotates (Papadopoulos et al.,
    ICCV 2017), and well defined for every shape, whatever its symmetry."""
    ys, xs = np.nonzero(mask)
    points = []
    for on, along, pick in ((ys, xs, ys.min()), (xs, ys, xs.max()), (ys, xs, ys.max()), (xs, ys, xs.min())):
        run = np.sort(along[on == pick])
        mid = run[(len(run) - 1) // 2]  # a pixel of the mask even where the row or column has gaps
        points.append((mid, pick) if on is ys else (pick, mid))
    return np.array(points, np.float64) + 0.5


def rotated_box(mask: np.ndarray, angle: float) -> np.ndarray:
    """The object's rotated box (4 x 2 pixel coordinates, corners in order round the rectangle): the smallest
    rectangle with sides along the object's own axes (`DemoObject.angle`) that holds every visible pixel whole.
    Where that rectangle would reach outside the image (an object cut by the border; Ultralytics reads OBB corners
    inside the image only), the axis-aligned box instead, which is the same rectangle for an unrotated object: the
    box label's corners."""
    ys, xs = np.nonzero(mask)
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)]).astype(np.float64)
    axes = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])  # rows: the object's x, y
    proj = corners @ axes.T
    (u0, v0), (u1, v1) = proj.min(0), proj.max(0)
    box = np.array([(u0, v0), (u1, v0), (u1, v1), (u0, v1)]) @ axes
    h, w = mask.shape
    if (box >= -1e-9).all() and (box[:, 0] <= w + 1e-9).all() and (box[:, 1] <= h + 1e-9).all():
        return np.clip(box, 0, [w, h])
    (x0, y0), (x1, y1) = corners.min(0), corners.max(0)
    return np.array([(x0, y0), (x1, y0), (x1, y1), (x0, y1)])


def mask_polygon(mask: np.ndarray) -> np.ndarray:
    """One polygon (N x 2 pixel coordinates, N >= 3) whose filling (`cv2.fillPoly`, what Ultralytics' polygon2mask
    does) is `mask`: the outlines of its pieces and holes (`cv2.findContours`, pixel-centre vertices) joined into
    one ring by zero-width bridges, each part entered and left at its point nearest to the ring built so far, as
    Ultralytics joins the pieces of a COCO mask. The polygon's extent is the mask's pixel extent, so its box is the
    object's box label less one pixel in width and height (boxes span pixel edges, vertices sit on pixel centres).
    """
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    parts = sorted((c.reshape(-1, 2).astype(np.float64) for c in contours), key=len, reverse=True)
    ring = parts[0]
    for part in parts[1:]:
        d = ((ring[:, None, :] - part[None, :, :]) ** 2).sum(-1)
        a, b = np.unravel_index(int(d.argmin()), d.shape)
        # out along the bridge at ring[a] -> part[b], once round the part, back to part[b] and ring[a]
        ring = np.concatenate([ring[: a + 1], np.roll(part, -b, 0), part[b : b + 1], ring[a:]], 0)
    while len(ring) < 3:  # a one- or two-pixel-wide sliver: Ultralytics needs three points to call it a polygon
        ring = np.concatenate([ring, ring[-1:]], 0)
    return ring


def _box_ok(mask: np.ndarray) -> bool:
    rows, cols = mask.any(1), mask.any(0)
    if not rows.any():
        return False
    r, c = np.nonzero(rows)[0], np.nonzero(cols)[0]
    return r[-1] - r[0] + 1 >= MIN_BOX_PX and c[-1] - c[0] + 1 >= MIN_BOX_PX


def _place(alpha: np.ndarray, x0: int, y0: int, imgsz: int):
    """Clip a local alpha patch at (x0, y0) to the image; return (full area, HxW mask, clipped alpha, box) or None."""
    full_area = int((alpha >= 128).sum())
    if full_area < 12:
        return None
    h, w = alpha.shape
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + w, imgsz), min(y0 + h, imgsz)
    if ix1 <= ix0 or iy1 <= iy0:
        return None
    a = alpha[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
    mask = np.zeros((imgsz, imgsz), bool)
    mask[iy0:iy1, ix0:ix1] = a >= 128
    return full_area, mask, a, (ix0, iy0, ix1, iy1)


# ----------------------------------------------------------------------------------------------------------- shapes
def _unit_shape(rng, cls: int):
    """Outer polygon and optional hole polygon of a class, radius about 1, centred at 0, pointing along +x."""
    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    circle = np.stack([np.cos(t), np.sin(t)], 1)
    hole = None
    if cls == 0:  # ellipse
        outer = circle
    elif cls in (1, 2, 3):  # triangle, rectangle, hexagon: regular polygons with a little vertex jitter
        k = {1: 3, 2: 4, 3: 6}[cls]
        jit = {1: 0.12, 2: 0.0, 3: 0.04}[cls]
        a = np.arange(k) * 2 * np.pi / k + np.pi / k * (cls == 2) + rng.normal(0, jit, k)
        r = 1 - rng.uniform(0, jit, k)
        outer = np.stack([r * np.cos(a), r * np.sin(a)], 1)
    elif cls == 4:  # star: 5 or 6 points
        k = int(rng.choice([5, 5, 6]))
        r_in = rng.uniform(0.38, 0.55)
        a = np.arange(2 * k) * np.pi / k
        r = np.where(np.arange(2 * k) % 2 == 0, 1.0, r_in)
        outer = np.stack([r * np.cos(a), r * np.sin(a)], 1)
    elif cls == 5:  # cross (plus sign)
        w = rng.uniform(0.2, 0.36)
        outer = np.array(
            [(w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w), (-w, -w), (-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w)]
        )
    elif cls == 6:  # ring
        outer = circle
        hole = circle * rng.uniform(0.42, 0.68) + rng.uniform(-0.06, 0.06, 2)
    else:  # arrow along +x
        sw, hw, hx = rng.uniform(0.14, 0.28), rng.uniform(0.45, 0.7), rng.uniform(0.0, 0.35)
        outer = np.array([(-1, -sw), (hx, -sw), (hx, -hw), (1, 0), (hx, hw), (hx, sw), (-1, sw)])
    return outer, hole


def _transform(pts, scale, aspect, angle):
    pts = pts * np.array([scale, scale * aspect])
    c, s_ = np.cos(angle), np.sin(angle)
    return pts @ np.array([[c, s_], [-s_, c]])


def _radius(rng, s: float) -> float:
    return float(np.exp(rng.uniform(np.log(7), np.log(70)))) * s


def _rasterise(polys, holes, margin=2):
    """Anti-aliased alpha patch of polygons (image coords, float) minus holes; return (alpha uint8, (x0, y0))."""
    allp = np.concatenate(polys, 0)
    x0, y0 = np.floor(allp.min(0)).astype(int) - margin
    x1, y1 = np.ceil(allp.max(0)).astype(int) + margin
    alpha = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    sh = 4  # sub-pixel precision of fillPoly
    off = np.array([x0, y0])

    def fixed(p):
        return [np.round((q - off) * (1 << sh)).astype(np.int32) for q in p]

    cv2.fillPoly(alpha, fixed(polys), 255, cv2.LINE_AA, sh)
    if holes:
        cv2.fillPoly(alpha, fixed(holes), 0, cv2.LINE_AA, sh)
    return alpha, (int(x0), int(y0))


def _center(rng, imgsz, r):
    lo, hi = -0.4 * r, imgsz + 0.4 * r
    return rng.uniform(lo, hi, 2)


def _object_alpha(rng, cls, s, imgsz):
    outer, hole = _unit_shape(rng, cls)
    r = _radius(rng, s)
    aspect = rng.uniform(*_ASPECT[cls])
    angle = rng.uniform(0, 2 * np.pi)
    c = _center(rng, imgsz, r)
    polys = [_transform(outer, r, aspect, angle) + c]
    holes = [_transform(hole, r, aspect, angle) + c] if hole is not None else []
    alpha, origin = _rasterise(polys, holes)
    return alpha, origin, float(angle)


def _distractor_alpha(rng, s, imgsz):
    """Unlabelled clutter that looks like an object: blobs, spiky polygons, crescents, glyphs, strokes."""
    r = _radius(rng, s)
    c = _center(rng, imgsz, r)
    kind = rng.choice(["blob", "spiky", "crescent", "glyph", "stroke"], p=[0.25, 0.2, 0.15, 0.25, 0.15])
    angle = rng.uniform(0, 2 * np.pi)
    if kind == "blob":  # smooth irregular outline: clearly not an ellipse
        t = np.linspace(0, 2 * np.pi, 72, endpoint=False)
        rad = np.ones_like(t)
        for f in (2, 3, 4, 5):
            rad += rng.uniform(0.08, 0.25) * np.cos(f * t + rng.uniform(0, 2 * np.pi))
        pts = np.stack([rad * np.cos(t), rad * np.sin(t)], 1) / rad.max()
        return _rasterise([_transform(pts, r, rng.uniform(0.5, 1), angle) + c], [])
    if kind == "spiky":  # irregular polygon with 5..9 vertices and strong radial jitter
        k = int(rng.integers(5, 10))
        t = np.sort(rng.uniform(0, 2 * np.pi, k))
        rad = rng.uniform(0.35, 1.0, k)
        pts = np.stack([rad * np.cos(t), rad * np.sin(t)], 1)
        return _rasterise([_transform(pts, r, rng.uniform(0.6, 1), angle) + c], [])
    if kind == "crescent":
        t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
        circ = np.stack([np.cos(t), np.sin(t)], 1)
        cut = circ * rng.uniform(0.8, 1.0) + np.array([rng.uniform(0.3, 0.6), 0])
        return _rasterise([_transform(circ, r, 1, angle) + c], [_transform(cut, r, 1, angle) + c])
    if kind == "glyph":
        ch = str(rng.choice(list(_GLYPHS)))
        font = int(rng.choice([cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX]))
        scale = max(r / 14, 0.3)
        thick = max(1, int(round(scale * rng.uniform(1.5, 4))))
        (tw, th), base = cv2.getTextSize(ch, font, scale, thick)
        pad = thick + 2
        patch = np.zeros((th + base + 2 * pad, tw + 2 * pad), np.uint8)
        cv2.putText(patch, ch, (pad, th + pad), font, scale, 255, thick, cv2.LINE_AA)
        m = cv2.getRotationMatrix2D((patch.shape[1] / 2, patch.shape[0] / 2), float(np.degrees(angle)), 1.0)
        side = int(np.ceil(np.hypot(*patch.shape))) + 2
        m[:, 2] += (side - np.array(patch.shape[::-1])) / 2
        patch = cv2.warpAffine(patch, m, (side, side), flags=cv2.INTER_LINEAR)
        return patch, (int(c[0] - side / 2), int(c[1] - side / 2))
    # stroke: a thick polyline of 2..4 points
    k = int(rng.integers(2, 5))
    pts = rng.uniform(-1, 1, (k, 2)) * r + c
    x0, y0 = np.floor(pts.min(0)).astype(int) - 8
    x1, y1 = np.ceil(pts.max(0)).astype(int) + 8
    patch = np.zeros((y1 - y0 + 1, x1 - x0 + 1), np.uint8)
    thick = int(rng.integers(2, 7))
    cv2.polylines(patch, [np.round((pts - [x0, y0]) * 16).astype(np.int32)], False, 255, thick, cv2.LINE_AA, 4)
    return patch, (int(x0), int(y0))


# ---------------------------------------------------------------------------------------------------------- painting
def _color(rng):
    hsv = np.uint8([[[rng.integers(0, 180), rng.integers(0, 256), rng.integers(40, 256)]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].astype(np.float32)


def _texture(rng, h, w, base_color):
    """A fill of h x w pixels: solid, gradient, stripes, checker or noisy, around `base_color`."""
    kind = rng.choice(["solid", "gradient", "stripes", "checker", "noise"], p=[0.35, 0.2, 0.15, 0.1, 0.2])
    c1 = base_color
    if kind == "solid":
        return np.broadcast_to(c1, (h, w, 3)).copy()
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ang = rng.uniform(0, np.pi)
    proj = xx * np.cos(ang) + yy * np.sin(ang)
    c2 = _color(rng) if rng.random() < 0.6 else c1 * rng.uniform(0.3, 0.7)
    if kind == "gradient":
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
        return c1 * (1 - t[..., None]) + c2 * t[..., None]
    if kind == "stripes":
        period = rng.uniform(3, 12)
        t = (np.sin(proj * 2 * np.pi / period) > 0).astype(np.float32)
        return c1 * (1 - t[..., None]) + c2 * t[..., None]
    if kind == "checker":
        cell = int(rng.integers(3, 9))
        t = (((xx // cell) + (yy // cell)) % 2).astype(np.float32)
        return c1 * (1 - t[..., None]) + c2 * t[..., None]
    noise = rng.normal(0, rng.uniform(15, 45), (h, w, 1)).astype(np.float32)
    return c1 + noise


def _paint(rng, img, alpha, box, s):
    """Composite a textured, shaded, maybe outlined fill through `alpha` into img at `box` (in place)."""
    x0, y0, x1, y1 = box
    h, w = y1 - y0, x1 - x0
    region = img[y0:y1, x0:x1].astype(np.float32)
    if rng.random() < 0.12:  # low contrast: close to what is underneath
        base = region.reshape(-1, 3).mean(0) + rng.normal(0, 28, 3)
    else:
        base = _color(rng)
    tex = _texture(rng, h, w, base)
    if rng.random() < 0.5:  # shading across the object
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        ang = rng.uniform(0, 2 * np.pi)
        proj = xx * np.cos(ang) + yy * np.sin(ang)
        t = (proj - proj.min()) / max(float(np.ptp(proj)), 1.0)
        tex = tex * (rng.uniform(0.6, 0.9) + rng.uniform(0.2, 0.6) * t)[..., None]
    a = alpha.astype(np.float32) / 255
    if rng.random() < 0.3 and min(h, w) >= 16 * s:  # outline in another colour
        k = int(rng.integers(2, 4))
        inner = cv2.erode(alpha, np.ones((2 * k + 1, 2 * k + 1), np.uint8)).astype(np.float32) / 255
        rim = np.clip(a - inner, 0, 1)[..., None]
        tex = tex * (1 - rim) + _color(rng) * rim
    a = a[..., None]
    img[y0:y1, x0:x1] = np.clip(region * (1 - a) + tex * a, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------------- backgrounds
_PHOTOS: list[np.ndarray] = []


def _photos() -> list[np.ndarray]:
    """The two photos shipped inside the ultralytics package (found without importing it)."""
    if not _PHOTOS:
        spec = importlib.util.find_spec("ultralytics")
        assets = Path(next(iter(spec.submodule_search_locations))) / "assets"
        for name in ("bus.jpg", "zidane.jpg"):
            im = cv2.imread(str(assets / name))
            if im is None:
                raise FileNotFoundError(f"background photo missing from the ultralytics package: {assets / name}")
            _PHOTOS.append(im)
    return _PHOTOS


def _background(rng, n):
    kind = rng.choice(["photo", "noise", "pattern", "flat"], p=[0.45, 0.2, 0.2, 0.15])
    if kind == "photo":
        src = _photos()[int(rng.integers(2))]
        H, W = src.shape[:2]
        side = int(rng.uniform(0.25, 1.0) * min(H, W))
        y, x = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
        img = cv2.resize(src[y : y + side, x : x + side], (n, n), interpolation=cv2.INTER_AREA)
        if rng.random() < 0.5:
            img = img[:, ::-1]
        hsv = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_BGR2HSV).astype(np.float32)
        hsv[..., 0] = (hsv[..., 0] + rng.uniform(-20, 20)) % 180
        hsv[..., 1] *= rng.uniform(0.4, 1.5)
        hsv[..., 2] *= rng.uniform(0.6, 1.3)
        img = cv2.cvtColor(np.clip(hsv, 0, 255).astype(np.uint8), cv2.COLOR_HSV2BGR)
        if rng.random() < 0.1:
            img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        return img
    if kind == "noise":  # smooth colour field plus fine grain
        g = int(rng.integers(3, 17))
        low = rng.uniform(0, 255, (g, g, 3)).astype(np.float32)
        img = cv2.resize(low, (n, n), interpolation=cv2.INTER_CUBIC)
        img += rng.normal(0, rng.uniform(2, 20), (n, n, 1)).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.uint8)
    if kind == "pattern":
        tex = _texture(rng, n, n, _color(rng))
        return np.clip(tex, 0, 255).astype(np.uint8)
    return np.clip(np.broadcast_to(_color(rng), (n, n, 3)), 0, 255).astype(np.uint8).copy()


def _background_clutter(rng, img, s):
    """Small strokes, dots and glyph fragments painted on the background (never labelled, never over objects)."""
    n = img.shape[0]
    for _ in range(int(rng.integers(0, 14))):
        col = tuple(float(v) for v in _color(rng))
        kind = rng.integers(3)
        if kind == 0:
            p = rng.uniform(0, n, (2, 2))
            thick = int(rng.integers(1, 3))
            cv2.line(img, tuple(int(v) for v in p[0]), tuple(int(v) for v in p[1]), col, thick, cv2.LINE_AA)
        elif kind == 1:
            center = tuple(int(v) for v in rng.uniform(0, n, 2))
            cv2.circle(img, center, int(rng.integers(1, 4) * s + 1), col, -1, cv2.LINE_AA)
        else:
            ch = str(rng.choice(list(_GLYPHS)))
            org = tuple(int(v) for v in rng.uniform(0, n, 2))
            cv2.putText(img, ch, org, cv2.FONT_HERSHEY_PLAIN, float(rng.uniform(0.6, 1.4) * s), col, 1, cv2.LINE_AA)


# ----------------------------------------------------------------------------------------------------------- degrade
def _degrade(rng, img, s):
    """Uneven lighting, gamma, blur, noise; return (image, JPEG quality to save it at)."""
    n = img.shape[0]
    f = img.astype(np.float32)
    if rng.random() < 0.5:  # light falls off across the image
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) / n
        ang = rng.uniform(0, 2 * np.pi)
        t = xx * np.cos(ang) + yy * np.sin(ang)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        f *= (rng.uniform(0.5, 0.9) + rng.uniform(0.2, 0.7) * t)[..., None]
    if rng.random() < 0.4:
        gamma = rng.uniform(0.6, 1.6)
        f = 255 * (np.clip(f, 0, 255) / 255) ** gamma
    r = rng.random()
    if r < 0.3:
        sigma = rng.uniform(0.4, 1.6) * s
        f = cv2.GaussianBlur(f, (0, 0), sigma)
    elif r < 0.4:  # motion blur
        k = int(rng.integers(3, 8))
        kernel = np.zeros((k, k), np.float32)
        kernel[k // 2] = 1
        m = cv2.getRotationMatrix2D((k / 2 - 0.5, k / 2 - 0.5), float(rng.uniform(0, 180)), 1.0)
        kernel = cv2.warpAffine(kernel, m, (k, k))
        f = cv2.filter2D(f, -1, kernel / max(kernel.sum(), 1e-6))
    if rng.random() < 0.6:
        f += rng.normal(0, rng.uniform(2, 14), f.shape).astype(np.float32)
    quality = int(rng.integers(45, 96))
    return np.clip(f, 0, 255).astype(np.uint8), quality


if __name__ == "__main__":  # python -m autoprune.demo.dataset OUT [N_TRAIN N_VAL [TASK]]: write a dataset
    import sys

    out = Path(sys.argv[1])
    nt, nv = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (16, 8)
    task = sys.argv[4] if len(sys.argv) > 4 else "detect"
    print(generate(out, n_train=nt, n_val=nv, seed=int(os.environ.get("SEED", 0)), task=task))
