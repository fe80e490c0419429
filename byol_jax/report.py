"""A picture of a run's representation: one HTML page with PNGs.

  python -m byol_jax.report --workdir=DIR [--out=DIR/report] [--points=2000] [--queries=6]

For any run directory, an imported one included (byol_jax.weights), from its latest checkpoint and the test split:
- the spectrum of the backbone features and of the projector output z (the uncentred singular values as fractions
  of their sum, whose entropy is the effective rank of byol_jax/collapse.py), beside the random network's, with the
  effective ranks and z_std*sqrt(d), the collapse indicators every evaluation records;
- a 2-D map (t-SNE, scikit-learn) of --points test features, coloured by class;
- nearest neighbours: for --queries test images, the 8 nearest other test images by cosine similarity of the
  features, framed green where the class is the query's;
- the training curves of metrics.jsonl (an imported run has none).
The random network is the run's config at its seed, untrained, its BatchNorm statistics estimated from data as a run's
step-0 evaluation does (eval.precise_bn). Writes DIR/report/index.html and its PNGs; prints the page's path.
"""
from __future__ import annotations

import html
import os

import numpy as np
from absl import app, flags, logging

from byol_jax import cli

# Class names of the datasets whose labels are numbers (an image folder's are its folder names: info['class_names']).
CLASS_NAMES = {
    'fashion_mnist': ('T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag',
                      'Ankle boot'),
    'cifar10': ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'),
    'stl10': ('airplane', 'bird', 'car', 'cat', 'deer', 'dog', 'horse', 'monkey', 'ship', 'truck'),
}


class ReportError(ValueError):
  """A run directory the report cannot read; one line naming it and the fix."""


# ----------------------------------------------------------------------------------------------------
# Measuring
# ----------------------------------------------------------------------------------------------------
def representations(workdir: str, max_examples: int = 10_000) -> dict:
  """The run's and the random network's test-split features and z, the labels, images and run facts."""
  import jax
  from jax.sharding import NamedSharding, PartitionSpec
  from byol_jax import step as step_lib, train, weights
  try:
    config, networks, state = weights.load_run(workdir)
  except weights.WeightsError as e:
    raise ReportError(str(e)) from None
  mesh = step_lib.make_mesh(config.train.num_devices)
  with config.unlocked():
    config.eval.num_train = 0
  data, info = train.load_data(config)
  feature_fn = train.make_feature_fn(config, networks, info)
  bs = max(mesh.size, config.eval.batch_size // mesh.size * mesh.size)
  replicated = NamedSharding(mesh, PartitionSpec())

  def test_features(s):
    batches, seen = [], 0
    for b in train.eval_batches(config, data, 'test', bs):
      batches.append(b)
      seen += int(np.sum(b['mask']))
      if seen >= max_examples:
        break
    f, y, z = train.extract_features(feature_fn, s, batches, mesh)
    return f[:max_examples], y[:max_examples], z[:max_examples]

  features, labels, z = test_features(jax.device_put(state, replicated))
  _, random_state = weights.initial_state(config)  # the run's seed: the network it started from
  random_state = jax.device_put(random_state, replicated)
  if config.eval.precise_bn != 'never':  # as the run's step-0 evaluation measured it
    stats_fn = train.make_batch_stats_fn(config, networks, info, mesh)
    random_state = random_state.replace(batch_stats=train.precise_batch_stats(
        stats_fn, random_state, train.precise_bn_batches(config, data), mesh))
  random_features, _, random_z = test_features(random_state)
  images = data['test'][0][:len(labels)] if data is not None else None
  return dict(config=config, info=info, step=int(jax.device_get(state.step)), features=features, z=z, labels=labels,
              random_features=random_features, random_z=random_z, images=images)


def spectrum(x) -> np.ndarray:
  """The uncentred singular values of [N, d] as fractions of their sum (what collapse.effective_rank reads)."""
  s = np.linalg.svd(np.asarray(x, np.float64), compute_uv=False)
  return s / max(s.sum(), 1e-30)


def neighbours(features, k: int, queries: np.ndarray) -> np.ndarray:
  """[len(queries), k] indices of the k nearest other rows to each query row, by cosine similarity."""
  f = np.asarray(features, np.float64)
  f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
  sim = f[queries] @ f.T
  sim[np.arange(len(queries)), queries] = -np.inf  # not itself
  return np.argsort(-sim, axis=1)[:, :k]


def embed_2d(features, seed: int = 0) -> np.ndarray:
  """t-SNE of the standardised features (after PCA to 50 dimensions, as t-SNE is usually run), [N, 2]."""
  from sklearn.decomposition import PCA
  from sklearn.manifold import TSNE
  x = np.asarray(features, np.float64)
  x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-8)
  if x.shape[1] > 50 and x.shape[0] > 50:
    x = PCA(50, random_state=seed).fit_transform(x)
  perplexity = float(min(30, max(5, (len(x) - 1) // 4)))
  return TSNE(2, perplexity=perplexity, init='pca', random_state=seed).fit_transform(x)


# ----------------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------------
def _plt():
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  return plt


def plot_spectra(r: dict, stats: dict, path: str) -> None:
  plt = _plt()
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, key, name in ((axes[0], 'features', 'backbone features'), (axes[1], 'z', 'projector output z')):
    rank_key = 'feature_effective_rank' if key == 'features' else 'z_effective_rank'
    for prefix, label, style in (('', f'this run (step {r["step"]})', '-'), ('random_', 'random network', '--')):
      p = spectrum(r[prefix + key])
      ax.semilogy(np.arange(1, len(p) + 1), p, style,
                  label=f'{label}: effective rank {stats[prefix + "stats"][rank_key]:.1f}')
    extra = ''
    if key == 'z':
      extra = (f' | z_std·√d {stats["stats"]["z_std_times_sqrt_d"]:.2f} '
               f'(random {stats["random_stats"]["z_std_times_sqrt_d"]:.2f})')
    ax.set(xlabel='singular value index', ylabel='fraction of the sum', title=f'{name}, d={r[key].shape[1]}{extra}')
    ax.grid(alpha=0.3, which='both')
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _class_names(dataset: str, info: dict, labels) -> list[str]:
  names = info.get('class_names') or CLASS_NAMES.get(dataset)
  return [str(n) for n in names] if names else [str(c) for c in range(int(np.max(labels)) + 1)]


def plot_map(xy, labels, names: list[str], path: str) -> None:
  plt = _plt()
  fig, ax = plt.subplots(figsize=(7, 6))
  cmap = plt.get_cmap('tab10' if len(names) <= 10 else 'tab20')
  for c in np.unique(labels):
    m = labels == c
    ax.scatter(xy[m, 0], xy[m, 1], s=5, color=cmap(int(c) % cmap.N), label=names[int(c)] if int(c) < len(names)
               else str(c))
  ax.set(title=f't-SNE of {len(labels)} test features, coloured by class', xticks=[], yticks=[])
  if len(names) <= 20:
    ax.legend(markerscale=3, fontsize=8, loc='center left', bbox_to_anchor=(1, 0.5))
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_neighbours(images, labels, queries, nearest, names: list[str], path: str) -> None:
  plt = _plt()
  rows, cols = len(queries), nearest.shape[1] + 1
  fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.45 * rows), squeeze=False)
  gray = images.shape[-1] == 1
  for i, q in enumerate(queries):
    for j, idx in enumerate([q] + list(nearest[i])):
      ax = axes[i, j]
      img = images[idx][..., 0] if gray else images[idx]
      ax.imshow(img, cmap='gray' if gray else None, vmin=0, vmax=255)
      ax.set_xticks([])
      ax.set_yticks([])
      colour = 'black' if j == 0 else ('tab:green' if labels[idx] == labels[q] else 'tab:red')
      for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3 if j else 1)
      if j == 0:
        ax.set_title(f'query: {names[int(labels[q])]}', fontsize=7)
  fig.suptitle('nearest test images by cosine similarity of the features (green: same class)', fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_curves(records: list[dict], path: str) -> bool:
  """The training curves of metrics.jsonl; False (nothing drawn) when it holds none."""
  plt = _plt()
  series = {}
  for key in ('loss', 'linear_probe_top1', 'knn_top1', 'probe_top1', 'z_std_times_sqrt_d', 'z_effective_rank',
              'feature_effective_rank'):
    points = [(r['step'], r[key]) for r in records if isinstance(r.get(key), (int, float))]
    if points:
      series[key] = np.array(points, np.float64)
  if not series:
    return False
  fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharex=True)  # evaluations are few: the loss's steps span x
  panels = ((axes[0], ('loss',), 'SSL loss'), (axes[1], ('linear_probe_top1', 'knn_top1', 'probe_top1'), 'top-1'),
            (axes[2], ('z_std_times_sqrt_d', 'z_effective_rank', 'feature_effective_rank'), 'collapse indicators'))
  for ax, keys, title in panels:
    for key in keys:
      if key in series:
        s = series[key]
        ax.plot(s[:, 0], s[:, 1], marker='o' if len(s) < 20 else None, label=key)
    ax.set(xlabel='step', title=title)
    if title == 'collapse indicators':
      ax.set_yscale('log')
    ax.grid(alpha=0.3)
    if ax.lines:
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return True


# ----------------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------------
def write_report(workdir: str, out: str | None = None, *, points: int = 2000, queries: int = 6, seed: int = 0,
                 max_examples: int = 10_000) -> str:
  """Measures, draws and writes out/index.html (out: DIR/report); returns its path."""
  from byol_jax import collapse, rundir
  if not os.path.isfile(os.path.join(workdir, rundir.CONFIG)):
    raise ReportError(f'{workdir}: no {rundir.CONFIG}; give a byol_jax run directory (--workdir)')
  if points < 10 or queries < 1:
    raise ReportError(f'--points={points} / --queries={queries}: give at least 10 points and 1 query')
  r = representations(workdir, max_examples)
  out = out or os.path.join(workdir, 'report')
  os.makedirs(out, exist_ok=True)
  stats = {'stats': collapse.collapse_stats(r['features'], r['z']),
           'random_stats': collapse.collapse_stats(r['random_features'], r['random_z'])}
  plot_spectra(r, stats, os.path.join(out, 'spectrum.png'))
  rng = np.random.default_rng(seed)
  names = _class_names(r['config'].data.name, r['info'], r['labels'])
  subset = np.sort(rng.choice(len(r['labels']), min(points, len(r['labels'])), replace=False))
  plot_map(embed_2d(r['features'][subset], seed), r['labels'][subset], names, os.path.join(out, 'map.png'))
  figures = ['spectrum.png', 'map.png']
  picked = np.sort(rng.choice(len(r['labels']), min(queries, len(r['labels'])), replace=False))
  nearest = neighbours(r['features'], min(8, len(r['labels']) - 1), picked)
  agreement = float(np.mean(r['labels'][nearest] == r['labels'][picked][:, None]))
  if r['images'] is not None:
    plot_neighbours(r['images'], r['labels'], picked, nearest, names, os.path.join(out, 'neighbours.png'))
    figures.append('neighbours.png')
  records = rundir.read_metrics(os.path.join(workdir, rundir.METRICS)) if os.path.exists(
      os.path.join(workdir, rundir.METRICS)) else []
  if plot_curves(records, os.path.join(out, 'curves.png')):
    figures.append('curves.png')
  imported = rundir.read_json(os.path.join(workdir, 'imported.json'))
  page = _html(workdir, r, stats, figures, agreement, len(picked), records, imported)
  path = os.path.join(out, 'index.html')
  with open(path, 'w') as f:
    f.write(page)
  return path


def _html(workdir, r, stats, figures, agreement, n_queries, records, imported) -> str:
  c = r['config']
  esc = html.escape
  facts = [('run', os.path.abspath(workdir)), ('step', r['step']), ('method', f'{c.method} / {c.predictor.kind}'),
           ('backbone', f'{c.model.backbone} width {c.model.width}, {c.model.stem} stem, padding {c.model.padding}'),
           ('data', f'{c.data.name} test split, {len(r["labels"])} images at {c.data.image_size} px')]
  if imported:
    facts.append(('imported', f'{imported.get("format")} from {imported.get("src")} (sha256 '
                              f'{str(imported.get("sha256"))[:12]}…)'))
  last = next((rec for rec in reversed(records) if 'linear_probe_top1' in rec), None)
  if last:
    facts.append(('last evaluation', f'step {last["step"]}: linear probe {last["linear_probe_top1"]:.4f}, '
                                     f'kNN {last.get("knn_top1", float("nan")):.4f}'))
  rows = ''.join(f'<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>' for k, v in facts)
  numbers = ''.join(
      f'<tr><td>{esc(label)}</td><td>{stats["stats"][key]:.3f}</td><td>{stats["random_stats"][key]:.3f}</td></tr>'
      for key, label in (('feature_effective_rank', 'effective rank of the features'),
                         ('z_effective_rank', 'effective rank of z'), ('z_std_times_sqrt_d', 'z_std·√d')))
  captions = {
      'spectrum.png': 'The spectrum: uncentred singular values as fractions of their sum (their entropy is the '
                      'effective rank). A collapsed representation puts everything in the first value.',
      'map.png': 't-SNE map of the test features (PCA to 50 dimensions first), one colour per class.',
      'neighbours.png': f'Nearest neighbours among the test images: {agreement:.0%} of the {n_queries} × 8 share '
                        "the query's class.",
      'curves.png': 'Training curves from metrics.jsonl.'}
  body = ''.join(f'<figure><img src="{f}" alt="{esc(f)}"><figcaption>{esc(captions[f])}</figcaption></figure>'
                 for f in figures)
  if 'curves.png' not in figures:
    body += '<p>No training records (metrics.jsonl): an imported or untrained run.</p>'
  return f'''<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>byol_jax report: {esc(os.path.basename(os.path.abspath(workdir)))}</title>
<style>body{{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}}table{{border-collapse:collapse;
margin:1em 0}}th,td{{border:1px solid #ccc;padding:4px 10px;text-align:left}}img{{max-width:100%}}
figure{{margin:2em 0}}figcaption{{color:#555;font-size:90%}}</style></head><body>
<h1>Representation report</h1>
<table>{rows}</table>
<h2>Collapse indicators (test split)</h2>
<table><tr><th></th><th>this run</th><th>random network</th></tr>{numbers}</table>
{body}
</body></html>
'''


def define_flags() -> None:
  flags.DEFINE_string('workdir', None, 'A run directory (trained, or imported with byol_jax.weights).')
  flags.DEFINE_string('out', None, 'Where to write index.html and the PNGs (default: DIR/report).')
  flags.DEFINE_integer('points', 2000, 'Test examples in the t-SNE map.')
  flags.DEFINE_integer('queries', 6, 'Test images whose nearest neighbours are shown.')
  flags.DEFINE_integer('max_examples', 10_000, 'Test examples embedded (at most).')


def main(argv):
  del argv
  FLAGS = flags.FLAGS
  if not FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  if not FLAGS.workdir:
    cli.fail('--workdir is required: a byol_jax run directory')
  from byol_jax import config as config_lib
  try:
    path = write_report(FLAGS.workdir, FLAGS.out, points=FLAGS.points, queries=FLAGS.queries,
                        max_examples=FLAGS.max_examples)
  except (ReportError, config_lib.ConfigError, FileNotFoundError) as e:
    cli.fail(str(e))
  print(f'wrote {path}')


if __name__ == '__main__':
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)
