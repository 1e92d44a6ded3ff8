"""What a training job costs: its memory estimate (printed before training, with the measured peak after) and
its work (pixels through the network), used to spread jobs over workers."""
from dataclasses import dataclass

from src.patchcore.detector import estimate_fit_bytes
from src.training.jobs import MIB


@dataclass(frozen=True)
class JobNeeds:
    """What a job asks of a worker: ``cost``, its work (pixels through the network), and ``memory``, the bytes
    its worker process holds at its peak (runtime included)."""
    cost: float
    memory: int


def job_estimate(job, grid, batch_size, image_size):
    """Bytes the job adds to the runtime: the fit's peak (``estimate_fit_bytes``) plus what one batch leaves
    resident while features stream in: per input, the features, their patch rows and the framework's copy
    (x levels with fusion), the input and its normalisation temporaries; plus the decoded image."""
    dim = int(job.patch_config["target_embed_dimension"])
    estimate = estimate_fit_bytes(job.train_inputs * grid[0] * grid[1], dim, job.patch_config)
    width, height = job.input_size
    levels = 1 if job.fusion_weights is None else 1 + len(job.fusion_weights)
    batch = batch_size * (3 * levels * dim * grid[0] * grid[1] + 3 * 3 * width * height) * 4 \
        + image_size[0] * image_size[1] * 3
    return dict(estimate, batch=batch, total=estimate["peak"] + batch)


def report_memory(estimates, runtime, say):
    """Print the memory estimate of the largest job to train (its worker's peak: runtime plus the job)."""
    if not estimates:
        return
    largest = max(estimates, key=lambda n: estimates[n]["total"])
    e = estimates[largest]
    patches = e["patches"]
    held, what = (e["features"], f"features {e['features'] / MIB:.0f} MiB ({patches} patches, kept in memory)") \
        if e["features"] else (e["projected_features"], f"projected features {e['projected_features'] / MIB:.0f} MiB "
                                                         f"({patches} patches x {e['projected_dim']}, full rows spilled)")
    say("Memory estimate for %s, the largest of %d jobs to train: %s + coreset selection working memory %.0f MiB "
        "(then bank %.0f MiB) + one batch %.0f MiB + runtime (MindSpore and model; measured) %.0f MiB = %.0f MiB per "
        "worker", largest, len(estimates), what, (e["peak"] - held) / MIB, e["bank"] / MIB, e["batch"] / MIB,
        runtime / MIB, (runtime + e["total"]) / MIB)


def report_peak(estimates, runtime, peaks, say):
    """Print the measured peak RSS next to the estimate; returns both for model.json."""
    if not estimates:
        return None
    largest = max(estimates, key=lambda n: estimates[n]["total"])
    e = estimates[largest]
    estimate = runtime + e["total"]
    peak = max(peaks)
    held = e["features"] or e["projected_features"]   # what the fit keeps: all rows, or their projection
    data = held + e["bank"]
    say("Peak RSS %.0f MiB (largest of %d processes) = runtime %.0f MiB (MindSpore, model, one batch; measured "
        "before training) + training %.0f MiB (%.2f x %s's %s + bank, %.0f MiB); estimate %.0f MiB "
        "(peak/estimate %.2f)", peak / MIB, len(peaks), runtime / MIB, (peak - runtime) / MIB,
        (peak - runtime) / data, largest, "features" if e["features"] else "projected features", data / MIB,
        estimate / MIB, peak / estimate)
    return {"peak_rss_bytes": peak, "estimate_bytes": estimate, "runtime_bytes": runtime, "largest_job": largest,
            "largest_job_estimate": e, "training_bytes_over_kept_features_and_bank": (peak - runtime) / data}


def job_cost(job):
    """Estimated work: pixels through the network (each fusion level counts)."""
    width, height = job.input_size
    levels = 1 if job.fusion_weights is None else sum(w > 0 for w in job.fusion_weights)
    return float((job.train_inputs + len(job.val_views)) * levels * width * height)


def job_needs(jobs, grids, batch_size, image_size, runtime, say):
    """Each job's memory estimate (the largest printed) and ``JobNeeds``: ({name: estimate}, {name: JobNeeds})."""
    estimates = {name: job_estimate(job, grids[name], batch_size, image_size) for name, job in jobs.items()}
    report_memory(estimates, runtime, say)
    return estimates, {name: JobNeeds(job_cost(job), runtime + estimates[name]["total"]) for name, job in jobs.items()}
