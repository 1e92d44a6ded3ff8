"""Task generators (HiAD-style): which detector ("task") handles which tile of the plan.

- ``A2OTaskGenerator``: one task for all tiles.
- ``O2OTaskGenerator``: one task per tile.
- ``NeighborhoodTaskGenerator(num_groups_width, num_groups_height)``: the tile grid cut into
  num_groups_height x num_groups_width blocks of neighbouring tiles (sizes differ by at most one,
  larger blocks first), one task per block.
- ``SpatialClusteringTaskGenerator(cluster_number)``: tile positions whose appearance, averaged over
  the training images, is similar share a task (KMeans on per-position descriptors).
- ``ThresholdClusteringTaskGenerator(cluster_threshold)``: the same, but positions are merged while
  the cosine similarity of their descriptors (average linkage) is above the threshold.
- ``RetrieveTaskGenerator(cluster_number)``: every training tile of every image is clustered
  (KMeans); each task keeps its centre and its member tiles, and test tiles are routed at inference
  to the nearest centre, so images need not be aligned.

The clustering generators describe tiles with ``descriptor(tiles) -> (n, d)`` (a list of HxWx3 uint8
RGB tiles in, one row per tile out). The default, :func:`colour_texture_descriptor`, is cheap and
deterministic; a CNN feature extractor can be passed instead. With a multi-resolution plan and
``fusion_weights`` (one weight per ds_factor), the tile and its low-resolution views are described
separately and the weighted descriptors concatenated.

Tasks are plain objects saved as JSON (``tasks.json``) by :func:`save_tasks`; task names are
``task_0, task_1, ...`` numbered in order of first appearance in the row-major plan.
"""
import functools
import os

import cv2
import numpy as np
from sklearn.cluster import AgglomerativeClustering, KMeans
from sklearn.metrics import pairwise_distances_argmin
from sklearn.preprocessing import normalize

from src.utils.checks import positive_int
from src.utils.errors import InputError
from src.utils.io import read_json, write_json
from src.utils.registry import Registry
from src.tiling.plan import MultiResolutionHRImageSpliter, TileIndex, crop_levels, fusion_weight_values

TASKS_FORMAT = "patchcore-ms/tasks"
TASKS_VERSION = 1


class Task:
    """One detector's share of the tiles.

    ``indexes``: the tiles it covers (for Retrieve: the tiles its training members come from).
    ``center``/``members``: Retrieve only: the cluster centre in descriptor space and the training
    tiles as [position in train_samples, row, col].
    """

    def __init__(self, name, indexes, center=None, members=None):
        self.name = name
        self.indexes = list(indexes)
        self.center = None if center is None else [float(v) for v in center]
        self.members = None if members is None else [[int(v) for v in m] for m in members]

    def __repr__(self):
        return f"Task({self.name!r}, {len(self.indexes)} tiles{'' if self.center is None else ', retrieval'})"

    def __str__(self):
        """The line HiAD logs when training starts."""
        return f"Task: {self.name}, Indexes: {[str(index) for index in self.indexes]}"

    def __eq__(self, other):
        return isinstance(other, Task) and self.to_dict() == other.to_dict()

    def training_tiles(self, num_train_samples):
        """[(position in train_samples, TileIndex)] this task's detector is trained on."""
        if self.members is None:
            return [(s, index) for s in range(num_train_samples) for index in self.indexes]
        by_position = {(index.row, index.col): index for index in self.indexes}
        if any(s >= num_train_samples for s, _, _ in self.members):
            raise InputError(f"{self.name} was built from more than {num_train_samples} training samples")
        return [(s, by_position[(row, col)]) for s, row, col in self.members]

    def to_dict(self):
        data = {"name": self.name, "indexes": [index.to_dict() for index in self.indexes]}
        if self.center is not None:
            data["center"] = list(self.center)
            data["members"] = [list(m) for m in self.members]
        return data

    @classmethod
    def from_dict(cls, data):
        if not isinstance(data, dict) or not isinstance(data.get("name"), str) \
                or not isinstance(data.get("indexes"), list):
            raise InputError(f"a task needs 'name' (string) and 'indexes' (list), got {str(data)[:80]!r}")
        center, members = data.get("center"), data.get("members")
        if (center is None) != (members is None):
            raise InputError(f"{data['name']}: 'center' and 'members' go together")
        if center is not None and not (
                isinstance(center, list) and all(isinstance(v, (int, float)) for v in center)
                and isinstance(members, list)
                and all(isinstance(m, list) and len(m) == 3 and all(isinstance(v, int) for v in m) for m in members)):
            raise InputError(f"{data['name']}: 'center' must be numbers and 'members' [sample, row, col] triples")
        task = cls(data["name"], [TileIndex.from_dict(d) for d in data["indexes"]], center, members)
        if members is not None:
            known = {(index.row, index.col) for index in task.indexes}
            if any((row, col) not in known for _, row, col in task.members):
                raise InputError(f"{task.name}: a member tile is not among the task's indexes")
        return task


def _grid_shape(indexes):
    return max(i.row for i in indexes) + 1, max(i.col for i in indexes) + 1


def tasks_from_labels(indexes, labels):
    """One task per distinct label, numbered by first appearance in ``indexes`` order."""
    order = list(dict.fromkeys(labels))
    return [Task(f"task_{k}", [index for index, label in zip(indexes, labels) if label == value])
            for k, value in enumerate(order)]


class TaskGenerator:
    """Base: ``create_tasks(train_samples, indexes) -> list[Task]``."""

    def create_tasks(self, train_samples, indexes):
        indexes = list(indexes)
        if not indexes:
            raise InputError("indexes", "the tile plan is empty")
        return self._create(list(train_samples), indexes)

    def _create(self, train_samples, indexes):
        raise NotImplementedError


class A2OTaskGenerator(TaskGenerator):
    """All tiles to one detector."""

    def _create(self, train_samples, indexes):
        return tasks_from_labels(indexes, [0] * len(indexes))


class O2OTaskGenerator(TaskGenerator):
    """One detector per tile."""

    def _create(self, train_samples, indexes):
        return tasks_from_labels(indexes, list(range(len(indexes))))


class NeighborhoodTaskGenerator(TaskGenerator):
    """Blocks of neighbouring tiles; ``num_groups_height`` defaults to ``num_groups_width``."""

    def __init__(self, num_groups_width, num_groups_height=None):
        self.num_groups_width = positive_int(num_groups_width, "num_groups_width")
        self.num_groups_height = positive_int(
            num_groups_width if num_groups_height is None else num_groups_height, "num_groups_height")

    def _create(self, train_samples, indexes):
        rows, cols = _grid_shape(indexes)
        if self.num_groups_height > rows or self.num_groups_width > cols:
            raise InputError("num_groups", f"{self.num_groups_width}x{self.num_groups_height} groups (w x h) "
                                           f"do not fit a grid of {cols}x{rows} tiles")
        row_group = _group_of_position(rows, self.num_groups_height)
        col_group = _group_of_position(cols, self.num_groups_width)
        labels = [row_group[i.row] * self.num_groups_width + col_group[i.col] for i in indexes]
        return tasks_from_labels(indexes, labels)


def _group_of_position(length, groups):
    """Group number of each position when ``length`` positions are cut into ``groups`` runs."""
    return np.concatenate([np.full(len(run), g) for g, run in enumerate(np.array_split(np.arange(length), groups))])


def colour_texture_descriptor(tiles, feature_resolution=1):
    """(n, 3*r*r + 4) float64 for n RGB uint8 tiles, r = ``feature_resolution``.

    Per tile: the tile area-averaged down to r x r pixels (colour layout, /255, flattened), the
    standard deviation of each channel (/255) and the mean Sobel gradient magnitude of the gray tile
    (/1020, the largest response of one 3x3 Sobel filter): colour plus texture strength, so two
    textures with the same mean colour still differ.
    """
    rows = []
    for tile in tiles:
        small = cv2.resize(tile, (feature_resolution, feature_resolution), interpolation=cv2.INTER_AREA)
        std = cv2.meanStdDev(tile)[1].reshape(-1)
        gray = cv2.cvtColor(tile, cv2.COLOR_RGB2GRAY).astype(np.float32)
        gradient = cv2.magnitude(cv2.Sobel(gray, cv2.CV_32F, 1, 0), cv2.Sobel(gray, cv2.CV_32F, 0, 1)).mean()
        rows.append(np.concatenate([small.reshape(-1) / 255.0, std / 255.0, [gradient / 1020.0]]))
    return np.asarray(rows, np.float64)


class _ClusteringTaskGenerator(TaskGenerator):
    """Shared tile description for the clustering generators.

    ``feature_resolution``: r of the default descriptor; ``descriptor``: replaces it;
    ``fusion_weights``: one weight per resolution of a ds_factors plan (None: the tile only);
    ``batch_size``: tiles per descriptor call; ``seed``: KMeans ``random_state``.
    ``detector_class``, ``detector_config`` and ``device`` are HiAD's parameters for describing tiles
    with the detector's backbone; they are kept on the generator (so HiAD scripts run unchanged) but
    the description comes from ``descriptor`` (default: :func:`colour_texture_descriptor`).
    """

    def __init__(self, feature_resolution=1, descriptor=None, fusion_weights=None, batch_size=16, seed=0,
                 detector_class=None, detector_config=None, device=None):
        self.feature_resolution = positive_int(feature_resolution, "feature_resolution")
        self.batch_size = positive_int(batch_size, "batch_size")
        self.seed = seed
        self.descriptor = descriptor or functools.partial(colour_texture_descriptor,
                                                          feature_resolution=self.feature_resolution)
        self.fusion_weights = None if fusion_weights is None else fusion_weight_values(fusion_weights)
        self.detector_class, self.detector_config, self.device = detector_class, detector_config, device

    def _describe(self, tiles):
        rows = []
        for start in range(0, len(tiles), self.batch_size):
            batch = tiles[start:start + self.batch_size]
            out = np.asarray(self.descriptor(batch), np.float64)
            if out.ndim != 2 or out.shape[0] != len(batch):
                raise InputError("descriptor", f"must return one row per tile, got shape {out.shape} "
                                               f"for {len(batch)} tiles")
            rows.append(out)
        return np.concatenate(rows)

    def tile_descriptors(self, sample, indexes):
        """(n_tiles, d) descriptors of one sample's tiles (a Sample, or its loaded HxWx3 image), levels
        weighted by ``fusion_weights``."""
        image = sample if isinstance(sample, np.ndarray) else sample.load_image()
        plan_size = getattr(indexes, "image_size", None)
        if plan_size is not None and (image.shape[1], image.shape[0]) != tuple(plan_size):
            raise InputError(getattr(sample, "image_path", None) or "<array>", f"image is {image.shape[1]}x{image.shape[0]} "
                                                             f"but the tile plan is for {plan_size[0]}x{plan_size[1]}")
        levels = [crop_levels(image, index) for index in indexes]
        weights = self.fusion_weights or [1.0]
        if self.fusion_weights is not None and any(len(views) != len(weights) for views in levels):
            raise InputError("fusion_weights", f"{len(weights)} weights for tiles with {len(levels[0])} "
                                               "resolutions (1 + the plan's ds_factors beyond 0)")
        return np.concatenate([weight * self._describe([views[level] for views in levels])
                               for level, weight in enumerate(weights)], axis=1)

    def _training_descriptors(self, train_samples, indexes):
        """(n_samples, n_tiles, d)."""
        if not train_samples:
            raise InputError("train_samples", f"{type(self).__name__} needs at least one training sample")
        return np.stack([self.tile_descriptors(sample, indexes) for sample in train_samples])

    def _kmeans(self, points, cluster_number):
        if cluster_number > len(points):
            raise InputError("cluster_number", f"{cluster_number} clusters for only {len(points)} tiles")
        return KMeans(n_clusters=cluster_number, n_init=10, random_state=self.seed).fit(points)


class SpatialClusteringTaskGenerator(_ClusteringTaskGenerator):
    """KMeans over tile positions (descriptor averaged over the training images)."""

    def __init__(self, cluster_number, **kwargs):
        super().__init__(**kwargs)
        self.cluster_number = positive_int(cluster_number, "cluster_number")

    def _create(self, train_samples, indexes):
        per_position = self._training_descriptors(train_samples, indexes).mean(axis=0)
        labels = self._kmeans(per_position, self.cluster_number).labels_
        return tasks_from_labels(indexes, labels.tolist())


def cosine_similarity_matrix(points):
    """Cosine similarity; all-zero descriptors count as identical to each other, unlike anything else."""
    unit = normalize(points)
    similarity = unit @ unit.T
    zero = ~unit.any(axis=1)
    similarity[np.ix_(zero, zero)] = 1.0
    return np.clip(similarity, -1.0, 1.0)


class ThresholdClusteringTaskGenerator(_ClusteringTaskGenerator):
    """Average-linkage clustering of tile positions, merging while cosine similarity > ``cluster_threshold``."""

    def __init__(self, cluster_threshold, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(cluster_threshold, (int, float)) or not -1.0 <= cluster_threshold <= 1.0:
            raise InputError("cluster_threshold", f"must be a cosine similarity in [-1, 1], got {cluster_threshold!r}")
        self.cluster_threshold = float(cluster_threshold)

    def _create(self, train_samples, indexes):
        per_position = self._training_descriptors(train_samples, indexes).mean(axis=0)
        if len(indexes) == 1:
            return tasks_from_labels(indexes, [0])
        distance = 1.0 - cosine_similarity_matrix(per_position)
        np.fill_diagonal(distance, 0.0)
        labels = AgglomerativeClustering(n_clusters=None, metric="precomputed", linkage="average",
                                         distance_threshold=1.0 - self.cluster_threshold).fit_predict(distance)
        return tasks_from_labels(indexes, labels.tolist())


class RetrieveTaskGenerator(_ClusteringTaskGenerator):
    """KMeans over all training tiles; test tiles go to the task of the nearest centre (:meth:`route`)."""

    def __init__(self, cluster_number, **kwargs):
        super().__init__(**kwargs)
        self.cluster_number = positive_int(cluster_number, "cluster_number")
        self.tasks = None

    def _create(self, train_samples, indexes):
        descriptors = self._training_descriptors(train_samples, indexes)
        n_samples, n_tiles, dim = descriptors.shape
        kmeans = self._kmeans(descriptors.reshape(-1, dim), self.cluster_number)
        labels = kmeans.labels_.reshape(n_samples, n_tiles)
        self.tasks = []
        for k, cluster in enumerate(dict.fromkeys(labels.reshape(-1).tolist())):
            members = [[s, indexes[t].row, indexes[t].col] for s, t in zip(*np.nonzero(labels == cluster))]
            covered = [index for t, index in enumerate(indexes) if (labels[:, t] == cluster).any()]
            self.tasks.append(Task(f"task_{k}", covered, kmeans.cluster_centers_[cluster], members))
        return self.tasks

    def route(self, sample, indexes, tasks=None):
        """The task of each tile of ``sample`` (aligned with ``indexes``): nearest centre, one pass."""
        tasks = self.tasks if tasks is None else list(tasks)
        if not tasks or any(task.center is None for task in tasks):
            raise InputError("tasks", "routing needs the tasks of a RetrieveTaskGenerator (with centres)")
        centres = np.asarray([task.center for task in tasks], np.float64)
        descriptors = self.tile_descriptors(sample, indexes)
        if descriptors.shape[1] != centres.shape[1]:
            raise InputError("tasks", f"centres have {centres.shape[1]} dimensions but the descriptor gives "
                                      f"{descriptors.shape[1]}: build the generator with the training settings")
        return [tasks[k] for k in pairwise_distances_argmin(descriptors, centres)]


# by class name, and the short names a config may use
TASK_GENERATORS = Registry("task_generator", "task generator", {cls.__name__: cls for cls in (
    A2OTaskGenerator, O2OTaskGenerator, NeighborhoodTaskGenerator, SpatialClusteringTaskGenerator,
    ThresholdClusteringTaskGenerator, RetrieveTaskGenerator)}, {
    "a2o": "A2OTaskGenerator", "o2o": "O2OTaskGenerator", "neighborhood": "NeighborhoodTaskGenerator",
    "spatial_clustering": "SpatialClusteringTaskGenerator", "threshold_clustering": "ThresholdClusteringTaskGenerator",
    "retrieve": "RetrieveTaskGenerator"})


def assign_tiles(image, tasks, indexes, task_generator=None):
    """[(task, [tiles])] for one HxWx3 image: the plan's, or with a routing ``task_generator`` (Retrieve
    models) each tile of ``indexes`` given to the task of its nearest centre."""
    if all(task.center is None for task in tasks):
        return [(task, task.indexes) for task in tasks]
    routed = task_generator.route(image, list(indexes), tasks)
    return [(task, [index for index, chosen in zip(indexes, routed) if chosen is task]) for task in tasks]


def routing_generator(spec, tasks, fusion_weights=None):
    """The generator that routes test tiles to Retrieve tasks (tasks with centres) as ``spec`` ({"name",
    "params"}, as training recorded it) describes; None when the task map is fixed."""
    if all(task.center is None for task in tasks):
        return None
    if spec and spec.get("name") is not None:
        return build_task_generator(spec["name"], **(spec.get("params") or {}))
    return RetrieveTaskGenerator(len(tasks), fusion_weights=fusion_weights)


def build_task_generator(name, **params):
    """A generator from its class name or short name (a2o, o2o, neighborhood, spatial_clustering,
    threshold_clustering, retrieve), e.g. from a config file."""
    return TASK_GENERATORS.build(name, **params)


def _cell(names, width):
    """Centre in ``width``; an odd leftover space goes to the left (as HiAD prints '  task_10 ')."""
    pad = width - len(names)
    return " " * (pad - pad // 2) + names + " " * (pad // 2)


def PrintTasks(tasks):  # noqa: N802 -- HiAD's name
    """Print (and return) the task grid: a header line, then '| name | name | ... | ' per tile row.

    Cells are as wide as the longest name, plus one when that lets the shortest names sit exactly
    centred; a tile shared by several tasks (Retrieve) shows their names joined by '/'.
    """
    tasks = list(tasks)
    names_at = {}
    for task in tasks:
        for index in task.indexes:
            names_at.setdefault((index.row, index.col), []).append(task.name)
    if not names_at:
        raise InputError("tasks", "no tiles in the tasks")
    rows = max(r for r, _ in names_at) + 1
    cols = max(c for _, c in names_at) + 1
    cells = {position: "/".join(names) for position, names in names_at.items()}
    longest, shortest = max(map(len, cells.values())), min(map(len, cells.values()))
    width = longest + (longest - shortest) % 2
    lines = [f"Row: {rows}, Column: {cols}, Patch Number: {len(names_at)}, Task Number: {len(tasks)}"]
    for row in range(rows):
        lines.append("| " + " | ".join(_cell(cells.get((row, col), ""), width) for col in range(cols)) + " | ")
    text = "\n".join(lines)
    print(text)
    return text


def save_tasks(path, tasks, indexes):
    """Write ``tasks.json`` atomically: the plan (parameters when known, and every index) and the tasks."""
    indexes = list(indexes) if not isinstance(indexes, MultiResolutionHRImageSpliter) else indexes
    known = set(indexes)
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
        raise InputError(path, "task names are not unique")
    for task in tasks:
        if any(index not in known for index in task.indexes):
            raise InputError(path, f"{task.name} has tiles that are not in the plan")
    write_json(path, {
        "format": TASKS_FORMAT, "version": TASKS_VERSION,
        "plan": indexes.params() if isinstance(indexes, MultiResolutionHRImageSpliter) else None,
        "indexes": [index.to_dict() for index in indexes],
        "tasks": [task.to_dict() for task in tasks],
    })


def load_tasks(path):
    """(tasks, indexes) from ``tasks.json``; indexes is the rebuilt plan when its parameters were saved."""
    path = os.fspath(path)
    data = read_json(path, "tasks file")
    if not isinstance(data, dict) or data.get("format") != TASKS_FORMAT:
        raise InputError(path, f"not a tasks file (expected \"format\": \"{TASKS_FORMAT}\")")
    if data.get("version") != TASKS_VERSION:
        raise InputError(path, f"unsupported tasks file version {data.get('version')!r} (expected {TASKS_VERSION})")
    try:
        indexes = [TileIndex.from_dict(d) for d in data["indexes"]]
        tasks = [Task.from_dict(d) for d in data["tasks"]]
        if data.get("plan") is not None:
            plan = MultiResolutionHRImageSpliter(**data["plan"])
            if list(plan) != indexes:
                raise InputError("the saved indexes differ from the saved plan parameters")
            indexes = plan
    except InputError as exc:
        raise InputError(path, str(exc)) from None
    except (KeyError, TypeError) as exc:
        raise InputError(path, f"malformed tasks file ({exc!r})") from None
    return tasks, indexes
