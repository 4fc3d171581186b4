"""Sample quality against score evaluations per image, for each sampler at several budgets.

    # a trained model: the Fréchet distance of its samples (digit classifier for MNIST, Inception otherwise)
    python benchmarks/sampler_quality.py --config configs/mnist.py --workdir runs/mnist --out results/mnist
    # the Gaussian mixture of tests/gaussian_mixture.py, whose score is exact: an exact metric
    python benchmarks/sampler_quality.py --mixture --out results/mixture

For every setting of `--grid` (method, T, corrector steps, ladder stride, step size; see GRID) and every
seed, draws `--num_samples` samples with the sampler of `ncsn_jax.sampling.methods`, and scores them:
  model    the Fréchet distance (`fd`) and Inception Score of the config's feature extractor, against the
           statistics of `--mode stats` (computed here when `<workdir>/stats` has none);
  mixture  the Wasserstein-1 distance (`w1`) between the samples' pixels and the mixture, computed
           against its exact CDF, and the error of the left mode's weight.
Each setting's ε is technique 4's for its ladder and T (the config's ε is for its own T only), times
the setting's `step_lr_scale` where it has one. Prints one
JSON line per setting (with the sampling seconds of its last seed, compiled by then), and writes
`<out>.json` (every seed's score) and `<out>.png` (score against evaluations per image, a bar for the
spread over the seeds, the first setting, in the full and budget grids the paper's sampler, as a band);
both files are rewritten after every setting. Runs that add seeds to the same settings (`--first_seed`,
`--only`) are joined into one report with `--merge a.json,b.json --out joined`.
"""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

import configs  # noqa: E402  (the checkout's configs/, loaded by name or path)
from configs import default  # noqa: E402
from ncsn_jax import config_checks, schedule  # noqa: E402
from ncsn_jax.evaluation import features  # noqa: E402
from ncsn_jax.modes import Options, stats, sweep  # noqa: E402
from ncsn_jax.run import images, weights  # noqa: E402
from ncsn_jax.runtime import data_parallel  # noqa: E402
from ncsn_jax.sampling import methods, sharded  # noqa: E402
from tests import gaussian_mixture  # noqa: E402

# (method, settings): the paper's sampler first (the reference), then cheaper budgets of each method.
GRID = {
    "full": [
        ("ald", {"n_steps_each": 5}),
        ("ald", {"n_steps_each": 1}),
        ("ald", {"n_steps_each": 5, "ladder_stride": 4}),
        ("cas", {"n_steps_each": 1}),
        ("cas", {"n_steps_each": 1, "ladder_stride": 2}),
        ("cas", {"n_steps_each": 2}),
        ("pc", {"corrector_steps": 1}),
        ("pc", {"corrector_steps": 1, "ladder_stride": 2}),
        ("pc", {"corrector_steps": 0}),
        ("ode", {}),
        ("ode", {"ladder_stride": 2}),
        ("ode", {"ladder_stride": 4}),
    ],
    # The paper's sampler, then each method at about a fifth of its evaluations (the question: does any
    # match it at a quarter?), then at about a tenth (where they break down): the fifths first, so that a
    # run stopped early (the files are rewritten after every setting) still answers the main question.
    "budget": [
        ("ald", {"n_steps_each": 5}),
        ("ode", {"ladder_stride": 2}),
        ("cas", {"n_steps_each": 1}),
        ("pc", {"corrector_steps": 1, "ladder_stride": 2}),
        ("ald", {"n_steps_each": 1}),
        ("ode", {"ladder_stride": 4}),
        ("cas", {"n_steps_each": 1, "ladder_stride": 2}),
        ("pc", {"corrector_steps": 1, "ladder_stride": 4}),
        ("ald", {"n_steps_each": 1, "ladder_stride": 2}),
    ],
    # The paper's sampler, then the cheap settings with other step sizes, all at about a fifth of its
    # evaluations: ε at 1.5 to 6 times technique 4's for cas (the CAS paper takes larger steps than
    # technique 4's; η = ε/σL² is the share of the noise a step removes), pc without a corrector on the
    # whole ladder, and pc's corrector at other signal-to-noise ratios.
    "step_size": [
        ("ald", {"n_steps_each": 5}),
        ("cas", {"n_steps_each": 1, "step_lr_scale": 2.0}),
        ("cas", {"n_steps_each": 1, "step_lr_scale": 4.0}),
        ("pc", {"corrector_steps": 0}),
        ("cas", {"n_steps_each": 1, "step_lr_scale": 1.5}),
        ("cas", {"n_steps_each": 1, "step_lr_scale": 3.0}),
        ("cas", {"n_steps_each": 1, "step_lr_scale": 6.0}),
        ("pc", {"corrector_steps": 1, "ladder_stride": 2, "snr": 0.08}),
        ("pc", {"corrector_steps": 1, "ladder_stride": 2, "snr": 0.32}),
    ],
    # The paper's sampler, then settings not tried above that also fit in a quarter of its evaluations:
    # ald and cas with T steps per level on every T-th level (about 96–101 evaluations on MNIST's 95
    # levels; technique 4 re-derives ε for each), and cas with one step at 2.5 times technique 4's.
    # (cas with T = 5 on every 5th level cannot run: technique 4's ε is below the least that lets the
    # noise follow a ladder with γ = 1.48.)
    "quarter": [
        ("ald", {"n_steps_each": 5}),
        ("ald", {"n_steps_each": 5, "ladder_stride": 5}),
        ("ald", {"n_steps_each": 3, "ladder_stride": 3}),
        ("ald", {"n_steps_each": 2, "ladder_stride": 2}),
        ("cas", {"n_steps_each": 2, "ladder_stride": 2}),
        ("cas", {"n_steps_each": 3, "ladder_stride": 3}),
        ("cas", {"n_steps_each": 1, "step_lr_scale": 2.5}),
    ],
    # The paper's sampler, then the diffusion literature's samplers on ρ-schedules (ρ = 7 unless given) of
    # the trained ladder's σ1 … σL at about 8 to 48 evaluations per image (a 60th to a 10th of ald's 476 on
    # MNIST): ancestral and dpm_solver_2m_sde take one evaluation per level, edm two per interval, with
    # its churn at its largest on every level (the defaults: S_churn 40, every σ from 0 to 1000, S_noise 1).
    "diffusion": [
        ("ald", {"n_steps_each": 5}),
        ("ancestral", {"schedule": "rho", "num_levels": 12}),
        ("ancestral", {"schedule": "rho", "num_levels": 24}),
        ("ancestral", {"schedule": "rho", "num_levels": 48}),
        ("dpm_solver_2m_sde", {"schedule": "rho", "num_levels": 8, "eta": 4.0}),
        ("dpm_solver_2m_sde", {"schedule": "rho", "num_levels": 12, "eta": 4.0}),
        ("dpm_solver_2m_sde", {"schedule": "rho", "num_levels": 24, "eta": 4.0}),
        ("dpm_solver_2m_sde", {"schedule": "rho", "num_levels": 12, "eta": 4.0, "rho": 3.0}),
        ("edm", {"schedule": "rho", "num_levels": 6}),
        ("edm", {"schedule": "rho", "num_levels": 12}),
        ("edm", {"schedule": "rho", "num_levels": 24}),
        # η = 1, the reverse SDE itself, against η = 4 above.
        ("dpm_solver_2m_sde", {"schedule": "rho", "num_levels": 12, "eta": 1.0}),
        ("dpm_solver_2m_sde", {"schedule": "rho", "num_levels": 24, "eta": 1.0}),
        ("dpm_solver_2m_sde", {"schedule": "rho", "num_levels": 48, "eta": 1.0}),
    ],
    # The settings docs/samplers.md recommends for the datasets not yet measured, after the paper's sampler.
    "recommended": [
        ("ald", {"n_steps_each": 5}),
        ("ancestral", {"schedule": "rho", "num_levels": 48}),
        ("dpm_solver_2m_sde", {"schedule": "rho", "num_levels": 32, "eta": 4.0}),
        ("dpm_solver_2m_sde", {"schedule": "rho", "num_levels": 12, "eta": 4.0}),
        ("edm", {"schedule": "rho", "num_levels": 24}),
    ],
    # The paper's sampler, then edm at about 24 evaluations (12 levels of ρ = 7) with each of its stochastic
    # settings varied: S_churn (γ = min(S_churn/N, √2 − 1): from 0, Heun's method on the probability flow,
    # to the largest γ at 5 for N = 12), the levels that churn, and S_noise.
    "edm_churn": [
        ("ald", {"n_steps_each": 5}),
        ("edm", {"schedule": "rho", "num_levels": 12, "churn": 0.0}),
        ("edm", {"schedule": "rho", "num_levels": 12, "churn": 1.0}),
        ("edm", {"schedule": "rho", "num_levels": 12, "churn": 2.5}),
        ("edm", {"schedule": "rho", "num_levels": 12, "churn": 5.0}),
        ("edm", {"schedule": "rho", "num_levels": 12, "churn": 5.0, "churn_max_sigma": 1.0}),
        ("edm", {"schedule": "rho", "num_levels": 12, "churn": 5.0, "churn_min_sigma": 0.0}),
        ("edm", {"schedule": "rho", "num_levels": 12, "churn": 5.0, "churn_noise": 1.007}),
    ],
    # One budget of each method, for a quick check (and the tests).
    "quick": [
        ("ald", {"n_steps_each": 2}),
        ("cas", {"n_steps_each": 1}),
        ("cas", {"n_steps_each": 1, "step_lr_scale": 4.0}),
        ("pc", {"corrector_steps": 1, "ladder_stride": 2}),
        ("ode", {"ladder_stride": 2}),
        ("ancestral", {"schedule": "rho", "num_levels": 12}),
        ("dpm_solver_2m_sde", {"schedule": "rho", "num_levels": 12}),
        ("edm", {"schedule": "rho", "num_levels": 6}),
    ],
}

flags.DEFINE_bool("mixture", False, "Score the samplers on the Gaussian mixture with its exact score.")
configs.define_config_flag("config", None, "The trained model's config, e.g. configs/mnist.py.", lock_config=True)
flags.DEFINE_string("workdir", None, "The trained model's folder (its checkpoints and stats).")
flags.DEFINE_integer("checkpoint_step", None, "The checkpoint to sample from; default the latest.")
flags.DEFINE_integer("num_samples", 1000, "Samples per setting and seed.")
flags.DEFINE_integer("seeds", 2, "Seeds per setting: the spread of the score.")
flags.DEFINE_integer("first_seed", 0, "The index of the first seed, so that a later run can add seeds to an "
                     "earlier one's (seed i draws from fold_in(key(config.seed), 1000 + i)).")
flags.DEFINE_string("only", None, "Comma-separated positions in the grid (from 0) to run, e.g. 0,2; default all.")
flags.DEFINE_enum("grid", "full", list(GRID), "The settings to run (see GRID).")
flags.DEFINE_string("out", None, "Writes <out>.json and <out>.png.")
flags.DEFINE_list("merge", None, "Reports (.json) of earlier runs to join into <out>: each setting's seeds "
                  "from all of them, in seed order; nothing is sampled.")
FLAGS = flags.FLAGS


def mixture_ladder() -> np.ndarray:
    """The mixture's ladder by the paper's techniques: σ1 above the largest distance between images, L by
    technique 2."""
    dim = int(np.prod(gaussian_mixture.IMAGE_SHAPE))
    sigma_begin = 2.0 * 10.0 * np.sqrt(dim)  # above the largest distance between two images (< 10·√dim)
    num_levels = schedule.num_noise_scales(dim, sigma_begin, 0.01)
    return schedule.geometric_sigmas(sigma_begin, 0.01, num_levels)


def mixture_scores(samples: np.ndarray) -> dict[str, float]:
    """W1 between the pixels and the mixture (∫|F_n − F| over a fine grid), and the left weight's error."""
    pixels = np.sort(samples.ravel().astype(np.float64))
    grid = np.linspace(-12.0, 8.0, 20_001)
    exact = gaussian_mixture.cdf(grid)
    empirical = np.searchsorted(pixels, grid, side="right") / pixels.size
    w1 = float(np.sum(np.abs(empirical - exact)) * (grid[1] - grid[0]))
    # Outside the grid the CDFs differ only by the samples that landed there.
    w1 += float(np.sum(np.maximum(-12.0 - pixels, 0)) + np.sum(np.maximum(pixels - 8.0, 0))) / pixels.size
    left_weight = np.mean(pixels < gaussian_mixture.BETWEEN_MODES)
    return {"w1": w1, "weight_error": float(abs(left_weight - gaussian_mixture.WEIGHTS[0]))}


def setting_config(base: ml_collections.ConfigDict, method: str, overrides: dict,
                   sigmas: np.ndarray) -> ml_collections.ConfigDict:
    """The sampling config of one GRID setting; ε is technique 4's, times `step_lr_scale` if given."""
    overrides = dict(overrides)
    step_lr_scale = overrides.pop("step_lr_scale", 1.0)
    settings = ml_collections.ConfigDict(base.to_dict())
    settings.method = method
    settings.update(overrides)
    if step_lr_scale != 1.0 and settings.ladder_stride > 1:  # the samplers re-derive ε on a sub-ladder
        raise ValueError("step_lr_scale needs ladder_stride 1: a sub-ladder's ε is always technique 4's")
    if "step_lr" in methods.get_method(method).settings:
        levels = methods.ladder(sigmas, settings)
        settings.step_lr = step_lr_scale * methods.technique4_step_lr(levels, settings.n_steps_each)
    elif step_lr_scale != 1.0:
        raise ValueError(f"step_lr_scale: {method} takes no step size")
    config_checks.check_sampling(settings, sigmas)
    return settings


def command_line_overrides(settings: ml_collections.ConfigDict) -> dict:
    """The `--config.sampling.*` values that select `settings` whatever the config's defaults: the method,
    the schedule and every setting the method reads, the stride and denoising where they are not the plain
    ones."""
    fields = {"method": True, "schedule": True, "ladder_stride": settings.ladder_stride != 1,
              "denoise": not settings.denoise, **{field: True for field in methods.settings_in_use(settings)}}
    return {f"sampling.{field}": settings[field] for field, shown in fields.items() if shown}


def describe(method: str, settings: ml_collections.ConfigDict, overrides: dict) -> str:
    """A row's label: the method, its step counts, the real-valued settings that the grid sets (ε as a
    multiple of technique 4's), the stride; e.g. `cas T=1 ε×4`, `pc corrector=1 stride=2`."""
    shown = {"n_steps_each": f"T={settings.n_steps_each}", "corrector_steps": f"corrector={settings.corrector_steps}"}
    if "step_lr_scale" in overrides:
        shown["step_lr"] = f"ε×{overrides['step_lr_scale']:g}"
    for field, label in (("snr", "snr"), ("churn", "churn"), ("churn_min_sigma", "churn from"),
                         ("churn_max_sigma", "churn to"), ("churn_noise", "S_noise"), ("eta", "η")):
        if field in overrides:
            shown[field] = f"{label}={settings[field]:g}"
    parts = [method, *(shown[field] for field in methods.get_method(method).settings if field in shown)]
    if settings.ladder_stride > 1:
        parts.append(f"stride={settings.ladder_stride}")
    if settings.schedule == "rho":
        parts.append(f"N={settings.num_levels} ρ={settings.rho:g}")
    return " ".join(parts)


def plot(rows: list[dict], metric: str, title: str, path: str) -> None:
    """Left: each setting's mean against its cost. Right: every seed's score of the settings near the first
    row's spread, one line each, since settings of near-equal cost and score overlap on the left."""
    figure, (overview, close_up) = plt.subplots(1, 2, figsize=(14, 6.5))
    reference_row = rows[0]
    low, high = min(reference_row["per_seed"]), max(reference_row["per_seed"])
    for axes in (overview, close_up):
        axes.axhspan(low, high, color="grey", alpha=0.25, label=f"{reference_row['setting']}: spread over the seeds")
    markers = dict(zip(methods.METHODS, "osD^v<>"))
    for method, marker in markers.items():
        mine = [row for row in rows if row["method"] == method]
        if not mine:
            continue
        x = [row["evaluations"] for row in mine]
        y = [row["mean"] for row in mine]
        spread = [[row["mean"] - min(row["per_seed"]) for row in mine],
                  [max(row["per_seed"]) - row["mean"] for row in mine]]
        overview.errorbar(x, y, yerr=spread, fmt=marker, capsize=3, label=method)
        for row in mine:
            overview.annotate(row["setting"].split(" ", 1)[-1] if " " in row["setting"] else "",
                              (row["evaluations"], row["mean"]), fontsize=6, xytext=(4, 3), textcoords="offset points")
    overview.set_xscale("log")
    means = [row["mean"] for row in rows]
    if max(means) > 10 * min(means):  # a setting that broke down would flatten the others into a line
        overview.set_yscale("log")
    overview.set_xlabel("score evaluations per image")
    overview.set_ylabel(metric)
    overview.legend(fontsize=8)
    band = high - low if high > low else abs(high) or 1.0
    near = [row for row in rows if row["mean"] <= high + 3 * band]
    for position, row in enumerate(near):
        close_up.plot([position] * len(row["per_seed"]), row["per_seed"], linestyle="none", alpha=0.6,
                      marker=markers[row["method"]])
        close_up.plot([position - 0.3, position + 0.3], [row["mean"]] * 2, "k-")
    close_up.set_xticks(range(len(near)), [f"{row['setting']}\n{row['evaluations']} evals" for row in near],
                        rotation=45, ha="right", fontsize=7)
    close_up.set_ylabel(f"{metric}, each seed (bar: mean)")
    left_out = len(rows) - len(near)
    close_up.set_title(f"near the first row's spread ({left_out} settings further off left out)" if left_out
                       else "every seed", fontsize=9)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(_):
    if FLAGS.merge:
        if not FLAGS.out:
            raise app.UsageError("--merge writes the joined report to --out: give it one")
        reports = []
        for path in FLAGS.merge:
            with open(path) as file:
                reports.append(json.load(file))
        title, rows = merge_reports(reports)
        write_report(rows, rows[0]["metric"], title, reports[0]["num_samples"])
        return
    mesh = data_parallel.data_mesh()
    if FLAGS.mixture:
        sigmas = mixture_ladder()
        score_fn, image_shape = gaussian_mixture.score, gaussian_mixture.IMAGE_SHAPE
        base = default.get_default_config().sampling
        base.batch_size = FLAGS.num_samples
        metric, title = "w1", f"Gaussian mixture, {len(sigmas)} levels, {FLAGS.num_samples} images per seed"
        score = mixture_scores
        seed = 0
    else:
        config = FLAGS.config
        state = weights.load_sampling_state(config, FLAGS.workdir, mesh, FLAGS.checkpoint_step)
        score_fn, sigmas = state.score_fn(), state.sigmas
        image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
        base = config.sampling
        extractor = features.feature_extractor(config)
        path = stats.statistics_path(config, FLAGS.workdir)
        if not os.path.exists(path):
            stats.run(config, FLAGS.workdir, Options("stats"))
        statistics = stats.load_reference_statistics(path)
        metric = "fd"
        title = (f"{config.data.dataset}, step {int(state.step)}, {len(sigmas)} levels, {FLAGS.num_samples} "
                 f"samples per seed ({extractor.name} features)")
        seed = config.seed

        def score(samples):
            found, logits = extractor.fn(images.to_8bit_levels(samples))
            result = sweep.quality_metrics(found, logits, statistics, config)
            return {"fd": result["fd"], "inception_score": result["inception_score"]}

    ladder = np.asarray(sigmas, np.float64)
    rows = []
    grid = GRID[FLAGS.grid]
    if FLAGS.only:
        positions = [int(position) for position in FLAGS.only.split(",")]
        if not all(0 <= position < len(grid) for position in positions):
            raise app.UsageError(f"--only {FLAGS.only}: the grid {FLAGS.grid!r} has positions 0 to {len(grid) - 1}")
        grid = [grid[position] for position in positions]
    seed_indices = range(FLAGS.first_seed, FLAGS.first_seed + FLAGS.seeds)
    for method, overrides in grid:
        settings = setting_config(base, method, overrides, ladder)
        results = []
        for index in seed_indices:
            rng = jax.random.fold_in(jax.random.key(seed), 1000 + index)
            start = time.perf_counter()
            samples = sharded.draw_samples(score_fn, jnp.asarray(sigmas, jnp.float32), settings,
                                           image_shape, rng, FLAGS.num_samples, mesh, progress_bar=False)
            seconds = time.perf_counter() - start  # the last seed's: compiled by then
            results.append(score(samples))
        per_seed = [result[metric] for result in results]
        row = {"setting": describe(method, settings, overrides), "method": method, "settings": settings.to_dict(),
               "overrides": command_line_overrides(settings),
               "evaluations": methods.score_evaluations(len(ladder), settings),
               "metric": metric, "mean": float(np.mean(per_seed)), "per_seed": per_seed,
               "seed_indices": list(seed_indices),
               "all_scores": results, "seconds": seconds}
        rows.append(row)
        print(json.dumps({k: row[k] for k in ("setting", "evaluations", "metric", "mean", "per_seed", "seconds")}),
              flush=True)
        if FLAGS.out:  # after every setting: a long run stopped early keeps what it measured
            write_report(rows, metric, title, FLAGS.num_samples)


def merge_reports(reports: list[dict]) -> tuple[str, list[dict]]:
    """One report's title and rows from runs that drew other seeds of the same settings, rows in order of
    first appearance. Only reports with one title join (the dataset, the checkpoint's step and ladder, the
    samples per seed); that they sampled one checkpoint, not two trainings that reached the same step, is
    the caller's to know. A setting's `seconds` is the least of its runs'."""
    title = reports[0]["title"]
    rows = {}
    for report in reports:
        if report["title"] != title:
            raise ValueError(f"cannot join reports of different models or sample counts: {report['title']!r} "
                             f"and {title!r}")
        for row in report["rows"]:
            indices = row.get("seed_indices", report["seed_indices"])  # older reports: the report's
            joined = rows.setdefault(row["setting"], {**row, "per_seed": [], "all_scores": [], "seed_indices": []})
            if joined["settings"] != row["settings"]:
                raise ValueError(f"{row['setting']!r}: the reports ran it with different settings")
            if set(indices) & set(joined["seed_indices"]):
                raise ValueError(f"{row['setting']!r}: seeds {sorted(set(indices) & set(joined['seed_indices']))} "
                                 "are in more than one report")
            joined["seed_indices"] += indices
            joined["per_seed"] += row["per_seed"]
            joined["all_scores"] += row["all_scores"]
            # The least of the runs' timings: other work on the machine only ever adds to one.
            joined["seconds"] = min(joined["seconds"], row["seconds"])
    for row in rows.values():
        order = np.argsort(row["seed_indices"])
        for key in ("seed_indices", "per_seed", "all_scores"):
            row[key] = [row[key][i] for i in order]
        row["mean"] = float(np.mean(row["per_seed"]))
    return title, list(rows.values())


def fastest_matching_reference(rows: list[dict]) -> dict | None:
    """The setting of fewest evaluations that matches the first row, the paper's sampler: its mean score (lower
    is better) at most the first row's worst seed, drawn with at least as many seeds. None if there is none,
    or the first row is not the paper's sampler."""
    reference = rows[0]
    if not methods.is_papers_sampler(ml_collections.ConfigDict(reference["settings"])):
        return None
    low, high = min(reference["per_seed"]), max(reference["per_seed"])
    matching = [row for row in rows[1:]
                if row["mean"] <= high and len(row["per_seed"]) >= len(reference["per_seed"])]
    if not matching:
        return None
    best = min(matching, key=lambda row: (row["evaluations"], row["mean"]))
    return {"evaluations": best["evaluations"], "overrides": best.get("overrides"), "setting": best["setting"],
            "mean": best["mean"], "reference": reference["setting"], "reference_range": [low, high],
            "reference_evaluations": reference["evaluations"]}


def write_report(rows: list[dict], metric: str, title: str, num_samples: int) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(FLAGS.out)), exist_ok=True)
    with open(FLAGS.out + ".json", "w") as file:
        json.dump({"title": title, "num_samples": num_samples, "seeds": max(len(row["per_seed"]) for row in rows),
                   "seed_indices": sorted({index for row in rows for index in row["seed_indices"]}),
                   "fastest_matching_ald": fastest_matching_reference(rows),
                   "rows": rows}, file, indent=1)
    plot(rows, metric, title, FLAGS.out + ".png")


if __name__ == "__main__":
    app.run(main)
