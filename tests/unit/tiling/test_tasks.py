"""Task generators on the seeds' 4x4 plan (2048x2048, patch 512): printed grids, clustering, routing, tasks.json."""
import json

import numpy as np
import pytest

from src.utils.errors import InputError
from src.data.sample import HRSample
from src.tiling.tasks import (A2OTaskGenerator, NeighborhoodTaskGenerator, O2OTaskGenerator, PrintTasks,
                       RetrieveTaskGenerator, SpatialClusteringTaskGenerator, Task, ThresholdClusteringTaskGenerator,
                       build_task_generator, colour_texture_descriptor, load_tasks, save_tasks)
from src.tiling.plan import MultiResolutionHRImageSpliter

# The grids below are copied from the seed documents, trailing spaces included.
SEED_A2O = [
    "Row: 4, Column: 4, Patch Number: 16, Task Number: 1",
    "| task_0 | task_0 | task_0 | task_0 | ",
    "| task_0 | task_0 | task_0 | task_0 | ",
    "| task_0 | task_0 | task_0 | task_0 | ",
    "| task_0 | task_0 | task_0 | task_0 | ",
]
SEED_O2O = [
    "Row: 4, Column: 4, Patch Number: 16, Task Number: 16",
    "|  task_0  |  task_1  |  task_2  |  task_3  | ",
    "|  task_4  |  task_5  |  task_6  |  task_7  | ",
    "|  task_8  |  task_9  |  task_10 |  task_11 | ",
    "|  task_12 |  task_13 |  task_14 |  task_15 | ",
]
SEED_NEIGHBORHOOD_2X2 = [
    "Row: 4, Column: 4, Patch Number: 16, Task Number: 4",
    "| task_0 | task_0 | task_1 | task_1 | ",
    "| task_0 | task_0 | task_1 | task_1 | ",
    "| task_2 | task_2 | task_3 | task_3 | ",
    "| task_2 | task_2 | task_3 | task_3 | ",
]
SEED_NEIGHBORHOOD_3X1 = [
    "Row: 4, Column: 4, Patch Number: 16, Task Number: 3",
    "| task_0 | task_0 | task_1 | task_2 | ",
    "| task_0 | task_0 | task_1 | task_2 | ",
    "| task_0 | task_0 | task_1 | task_2 | ",
    "| task_0 | task_0 | task_1 | task_2 | ",
]
TWO_TEXTURES_BY_HALF = [
    "Row: 4, Column: 4, Patch Number: 16, Task Number: 2",
    *["| task_0 | task_0 | task_1 | task_1 | "] * 4,
]


@pytest.fixture(scope="module")
def plan():
    return MultiResolutionHRImageSpliter(image_size=2048, patch_size=512)


def two_texture_image(seed, rough_side="right"):
    """2048x2048: one half flat gray with faint noise, the other a high-contrast 8 px checkerboard."""
    rng = np.random.default_rng(seed)
    image = (88 + rng.integers(0, 5, (2048, 2048, 3))).astype(np.uint8)
    yy, xx = np.mgrid[0:2048, 0:1024]
    checker = np.where((yy // 8 + xx // 8) % 2 == 0, 40, 200)[..., None] + rng.integers(0, 5, (2048, 1024, 3))
    if rough_side == "right":
        image[:, 1024:] = checker
    else:
        image[:, :1024] = checker
    return image


@pytest.fixture(scope="module")
def train_samples():
    return [HRSample(two_texture_image(seed)) for seed in range(3)]


@pytest.mark.parametrize("generator, expected", [
    (A2OTaskGenerator(), SEED_A2O),
    (O2OTaskGenerator(), SEED_O2O),
    (NeighborhoodTaskGenerator(num_groups_width=2, num_groups_height=2), SEED_NEIGHBORHOOD_2X2),
    (NeighborhoodTaskGenerator(num_groups_width=3, num_groups_height=1), SEED_NEIGHBORHOOD_3X1),
], ids=["a2o", "o2o", "neighborhood2x2", "neighborhood3x1"])
def test_seed_grids_print_exactly(generator, expected, plan, capsys):
    text = PrintTasks(generator.create_tasks([], plan))
    assert text.split("\n") == expected
    assert capsys.readouterr().out == text + "\n"


def test_neighborhood_height_defaults_to_width(plan):
    default = NeighborhoodTaskGenerator(num_groups_width=2).create_tasks([], plan)
    assert default == NeighborhoodTaskGenerator(2, 2).create_tasks([], plan)


def test_neighborhood_groups_must_fit_the_grid(plan):
    with pytest.raises(InputError, match="do not fit"):
        NeighborhoodTaskGenerator(num_groups_width=5, num_groups_height=1).create_tasks([], plan)
    with pytest.raises(InputError, match="positive integer"):
        NeighborhoodTaskGenerator(num_groups_width=0)


def test_neighborhood_on_uneven_grid_puts_larger_blocks_first():
    plan = MultiResolutionHRImageSpliter(image_size=(1000, 100), patch_size=100)  # 1 x 10 tiles
    tasks = NeighborhoodTaskGenerator(num_groups_width=4, num_groups_height=1).create_tasks([], plan)
    assert [len(task.indexes) for task in tasks] == [3, 3, 2, 2]


def test_task_str_is_the_seed_log_line(plan):
    task = A2OTaskGenerator().create_tasks([], plan)[0]
    assert str(task).startswith(
        "Task: task_0, Indexes: ['{\"main_index\": {\"x\": 0, \"y\": 0, \"width\": 512, \"height\": 512}, "
        "\"low_resolution_indexes\": null}', '{\"main_index\": {\"x\": 512, \"y\": 0, ")
    assert str(task) == f"Task: task_0, Indexes: {[str(index) for index in plan]}"


def test_spatial_clustering_separates_two_textures_deterministically(train_samples, plan):
    first = SpatialClusteringTaskGenerator(cluster_number=2, seed=3).create_tasks(train_samples, plan)
    second = SpatialClusteringTaskGenerator(cluster_number=2, seed=3).create_tasks(train_samples, plan)
    assert first == second
    assert PrintTasks(first).split("\n") == TWO_TEXTURES_BY_HALF


def test_spatial_clustering_with_more_clusters_than_textures(train_samples, plan):
    tasks = SpatialClusteringTaskGenerator(cluster_number=4, seed=0).create_tasks(train_samples, plan)
    assert 2 <= len(tasks) <= 4
    for task in tasks:  # a cluster never mixes the two textures
        assert len({index.col >= 2 for index in task.indexes}) == 1
    assert sorted((i.row, i.col) for task in tasks for i in task.indexes) == [(i.row, i.col) for i in plan]


def test_spatial_clustering_rejects_impossible_requests(train_samples, plan):
    with pytest.raises(InputError, match="only 16 tiles"):
        SpatialClusteringTaskGenerator(cluster_number=17).create_tasks(train_samples, plan)
    with pytest.raises(InputError, match="at least one training sample"):
        SpatialClusteringTaskGenerator(cluster_number=2).create_tasks([], plan)


def test_threshold_clustering_follows_the_threshold(train_samples, plan):
    split = ThresholdClusteringTaskGenerator(cluster_threshold=0.95).create_tasks(train_samples, plan)
    assert PrintTasks(split).split("\n") == TWO_TEXTURES_BY_HALF
    merged = ThresholdClusteringTaskGenerator(cluster_threshold=0.5).create_tasks(train_samples, plan)
    assert len(merged) == 1
    with pytest.raises(InputError, match="cosine similarity"):
        ThresholdClusteringTaskGenerator(cluster_threshold=1.5)


def test_retrieve_clusters_tiles_and_routes_by_appearance(train_samples, plan):
    generator = RetrieveTaskGenerator(cluster_number=2, seed=0)
    tasks = generator.create_tasks(train_samples, plan)
    assert len(tasks) == 2
    flat_task, rough_task = tasks  # task_0 holds the top-left (flat) tile
    assert {(r, c) for _, r, c in flat_task.members} == {(r, c) for r in range(4) for c in range(2)}
    assert len(flat_task.members) == len(rough_task.members) == 3 * 8
    assert len(flat_task.center) == len(rough_task.center) == 7

    # A test image with the textures swapped: routing follows appearance, not position.
    routed = generator.route(HRSample(two_texture_image(99, rough_side="left")), plan)
    assert [task.name for task in routed] == [("task_1" if i.col < 2 else "task_0") for i in plan]

    training = rough_task.training_tiles(len(train_samples))
    assert len(training) == 24 and all(index.col >= 2 for _, index in training)


def test_route_needs_retrieval_tasks(train_samples, plan):
    with pytest.raises(InputError, match="routing needs"):
        RetrieveTaskGenerator(cluster_number=2).route(train_samples[0], plan)
    with pytest.raises(InputError, match="routing needs"):
        RetrieveTaskGenerator(2).route(train_samples[0], plan, A2OTaskGenerator().create_tasks([], plan))


def test_injected_descriptor_and_batches(train_samples, plan):
    batch_sizes = []

    def red_mean(tiles):
        batch_sizes.append(len(tiles))
        assert all(tile.shape == (512, 512, 3) and tile.dtype == np.uint8 for tile in tiles)
        return [[tile[..., 0].mean()] for tile in tiles]

    generator = SpatialClusteringTaskGenerator(cluster_number=2, descriptor=red_mean, batch_size=5)
    assert generator.tile_descriptors(train_samples[0], plan).shape == (16, 1)
    assert batch_sizes == [5, 5, 5, 1]
    with pytest.raises(InputError, match="one row per tile"):
        SpatialClusteringTaskGenerator(2, descriptor=lambda tiles: [[0.0]]).create_tasks(train_samples, plan)


def test_fusion_weights_describe_each_resolution(train_samples):
    plan = MultiResolutionHRImageSpliter(image_size=2048, patch_size=512, ds_factors=[0, 1])
    weights = [0.5, 0.5]
    generator = SpatialClusteringTaskGenerator(cluster_number=2, fusion_weights=weights)
    descriptors = generator.tile_descriptors(train_samples[0], plan)
    assert descriptors.shape == (16, 14) and weights == [0.5, 0.5]
    main_only = colour_texture_descriptor([train_samples[0].load_image()[:512, :512]])[0]
    np.testing.assert_allclose(descriptors[0, :7], 0.5 * main_only)
    with pytest.raises(InputError, match="3 weights"):
        SpatialClusteringTaskGenerator(2, fusion_weights=[1, 1, 1]).tile_descriptors(train_samples[0], plan)


def test_descriptor_tells_textures_apart():
    flat = np.full((64, 64, 3), 120, np.uint8)
    checker = np.where((np.indices((64, 64)).sum(axis=0) // 4) % 2 == 0, 0, 240).astype(np.uint8)
    rough = np.repeat(checker[..., None], 3, axis=2)
    flat_row, rough_row = colour_texture_descriptor([flat, rough], feature_resolution=2)
    assert flat_row.shape == (3 * 2 * 2 + 4,)
    assert flat_row[-4:].max() == 0 and rough_row[-4:].min() > 0.1


def test_tasks_json_roundtrip(tmp_path, train_samples, plan):
    generator = RetrieveTaskGenerator(cluster_number=2)
    tasks = generator.create_tasks(train_samples, plan)
    path = tmp_path / "saved_models" / "tasks.json"
    save_tasks(path, tasks, plan)
    json.loads(path.read_text())  # plain JSON
    assert [p.name for p in path.parent.iterdir()] == ["tasks.json"]  # no temporary left behind
    loaded, indexes = load_tasks(path)
    assert loaded == tasks and list(indexes) == list(plan) and indexes.params() == plan.params()
    test_sample = HRSample(two_texture_image(5))
    assert [t.name for t in generator.route(test_sample, indexes, loaded)] == \
           [t.name for t in generator.route(test_sample, plan)]

    neighbours = NeighborhoodTaskGenerator(2).create_tasks([], plan)
    save_tasks(path, neighbours, list(plan))
    loaded, indexes = load_tasks(path)
    assert loaded == neighbours and indexes == list(plan)


@pytest.mark.parametrize("content, fragment", [
    ("{not json", "unreadable tasks file"),
    ('{"format": "other"}', "not a tasks file"),
    ('{"format": "patchcore-ms/tasks", "version": 99}', "unsupported tasks file version"),
    ('{"format": "patchcore-ms/tasks", "version": 1, "indexes": [], "tasks": [{"name": 3}]}', "a task needs"),
    ('{"format": "patchcore-ms/tasks", "version": 1, "tasks": []}', "malformed"),
])
def test_bad_tasks_files_are_input_errors(tmp_path, content, fragment):
    path = tmp_path / "tasks.json"
    path.write_text(content)
    with pytest.raises(InputError, match=fragment) as error:
        load_tasks(path)
    assert str(error.value).startswith(str(path))


def test_save_rejects_tasks_outside_the_plan(tmp_path, plan):
    other = MultiResolutionHRImageSpliter(image_size=1024, patch_size=256, stride=128)
    with pytest.raises(InputError, match="not in the plan"):
        save_tasks(tmp_path / "tasks.json", O2OTaskGenerator().create_tasks([], other), plan)
    assert not (tmp_path / "tasks.json").exists()


def test_task_dict_validation():
    with pytest.raises(InputError, match="go together"):
        Task.from_dict({"name": "task_0", "indexes": [], "center": [0.0]})


def test_build_task_generator():
    generator = build_task_generator("NeighborhoodTaskGenerator", num_groups_width=3, num_groups_height=1)
    assert isinstance(generator, NeighborhoodTaskGenerator) and generator.num_groups_width == 3
    assert isinstance(build_task_generator("retrieve", cluster_number=2), RetrieveTaskGenerator)
    with pytest.raises(InputError, match="unknown task generator 'kmeans'"):
        build_task_generator("kmeans")
    with pytest.raises(InputError, match="bad parameters"):
        build_task_generator("a2o", cluster_number=3)
