"""Matplotlib (Agg) figures for the theory: trajectories, phase portraits, phase diagrams, alignment.

Every `*_figure` function returns a Figure; `save(fig, path)` writes a PNG and closes it.
"""
from __future__ import annotations

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from theory import ode  # noqa: E402

VARS = (('p', r'$p_j$ (predictor eigenvalue)'), ('s', r'$s_j$ (eigenvalue of $F$)'),
        ('tau', r'$\tau_j$ (target / online)'))


def save(fig, path, dpi=100):
  fig.savefig(path, dpi=dpi, bbox_inches='tight')
  plt.close(fig)
  return path


def eigenmodes_figure(t, traj, t_sim=None, sim=None, title=None, log_s=False):
  """p_j, s_j, tau_j over time: ODE solid lines, simulation as markers (same colour per mode)."""
  fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
  m = traj['p'].shape[1]
  colors = plt.cm.viridis(np.linspace(0, 0.9, m))
  for ax, (v, label) in zip(axes, VARS):
    for j in range(m):
      ax.plot(t, traj[v][:, j], color=colors[j], lw=1.8, label=f'mode {j} ODE' if v == 'p' else None)
      if sim is not None:
        stride = max(1, len(t_sim) // 25)
        ax.plot(t_sim[::stride], sim[v][::stride, j], 'o', ms=3.5, mfc='none', color=colors[j],
                label=f'mode {j} sim' if v == 'p' else None)
    ax.set_xlabel('t')
    ax.set_ylabel(label)
    if v == 's' and log_s:
      ax.set_yscale('log')
    ax.grid(alpha=0.3)
  axes[0].legend(fontsize=7, ncol=2 if sim is not None else 1)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def rel_error_figure(t, agreement):
  fig, ax = plt.subplots(figsize=(5, 3.4))
  for v, _ in VARS:
    ax.semilogy(t, np.maximum(agreement[f'rel_err_{v}'], 1e-12), label=v)
  ax.set_xlabel('t')
  ax.set_ylabel('relative error, sim vs ODE (max over modes)')
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def phase_portrait(ax, eta, tau=1.0, alpha_p=1.0, sigma2=0.0, p_range=(-0.6, 1.6), s_range=(0.0, 2.0),
                   n=31, starts=None, t_max=30.0):
  """Fig. 3 panel: flow of (p, s) at fixed tau, fixed points, the invariant parabola s = p^2/alpha_p."""
  params = ode.ModeParams(alpha_p, eta, 0.0, sigma2, 1.0)
  pg, sg = np.meshgrid(np.linspace(*p_range, n), np.linspace(*s_range, n))
  d = ode.rhs(ode.ModeState(jnp.asarray(pg), jnp.asarray(sg), jnp.full(pg.shape, tau)), 0.0, params)
  dp, ds = np.asarray(d.p), np.asarray(d.s)
  speed = np.hypot(dp, ds)
  ax.streamplot(pg, sg, dp, ds, color=np.log10(speed + 1e-6), cmap='Greys', density=1.1, linewidth=0.7,
                arrowsize=0.8)
  pp = np.linspace(*p_range, 200)
  ax.plot(pp, pp ** 2 / alpha_p, 'b--', lw=1.2, label=r'parabola $s=p^2/\alpha_p$')
  if starts is not None:  # a few trajectories
    y0 = ode.ModeState(*(jnp.asarray(v) for v in (starts[:, 0], starts[:, 1], np.full(len(starts), tau))))
    ts = jnp.linspace(0.0, t_max, 400)
    tr = ode.integrate(y0, ts, params)
    for j in range(len(starts)):
      ax.plot(np.asarray(tr.p[:, j]), np.asarray(tr.s[:, j]), color='tab:orange', lw=1.3,
              label='trajectories' if j == 0 else None)
      ax.plot(starts[j, 0], starts[j, 1], '.', color='tab:orange')
  p_star = tau / (1.0 + sigma2)
  if eta == 0:
    ax.axvline(p_star, color='tab:green', lw=2.5, alpha=0.8, label=r'stable line $p=\tau/(1+\sigma^2)$')
    ax.axhline(0.0, color='tab:red', lw=2.5, alpha=0.8, label=r'collapsed line $s=0$')
  else:
    lo, hi = ode.fixed_points(tau, eta, sigma2)
    ax.plot([0], [0], 'o', color='tab:green', ms=9, mec='k', label='stable fixed point')
    if np.isfinite(hi):
      ax.plot([hi], [hi ** 2 / alpha_p], 'o', color='tab:green', ms=9, mec='k')
      ax.plot([lo], [lo ** 2 / alpha_p], 'o', color='white', ms=9, mec='tab:red', mew=2,
              label=r'unstable $p^*_-$')
  ax.set_xlim(*p_range)
  ax.set_ylim(*s_range)
  ax.set_xlabel(r'$p_j$')
  ax.set_ylabel(r'$s_j$')
  ax.set_title(rf'$\eta$ = {eta:g}, $\tau$ = {tau:g}, $\alpha_p$ = {alpha_p:g}')


def phase_portrait_figure(etas=(0.0, 0.01, 1.0), tau=1.0, alpha_p=1.0, sigma2=0.0, with_starts=True):
  fig, axes = plt.subplots(1, len(etas), figsize=(4.6 * len(etas), 4.2))
  starts = np.array([[0.1, 0.05], [0.3, 0.3], [-0.4, 0.5], [0.05, 1.0], [0.8, 1.6], [1.4, 0.4],
                     [0.2, 0.02]]) if with_starts else None
  for ax, eta in zip(np.atleast_1d(axes), etas):
    phase_portrait(ax, eta, tau, alpha_p, sigma2, starts=starts)
  np.atleast_1d(axes)[0].legend(fontsize=7, loc='upper left')
  fig.tight_layout()
  return fig


def parabola_figure(etas=(0.1, 0.25, 0.4), tau=1.0, sigma2=0.0, p_range=(-0.2, 1.1)):
  """Fig. 4: dp/dt on the parabola (Eqn 16) below, at and above eta_c, with its fixed points."""
  fig, ax = plt.subplots(figsize=(5.2, 3.8))
  pp = np.linspace(*p_range, 300)
  for eta in etas:
    line, = ax.plot(pp, ode.parabola_rhs(pp, tau, eta, sigma2), label=rf'$\eta$ = {eta:g}')
    lo, hi = ode.fixed_points(tau, eta, sigma2)
    ax.plot([0], [0], 'o', color=line.get_color(), ms=7)
    if np.isfinite(lo):
      ax.plot([lo], [0], 'o', mfc='white', mec=line.get_color(), ms=7, mew=2)
      ax.plot([hi], [0], 'o', color=line.get_color(), ms=7)
  ax.axhline(0, color='k', lw=0.8)
  ax.set_xlabel(r'$p_j$')
  ax.set_ylabel(r'$\dot p_j$ on the parabola (Eqn 16)')
  ax.set_title(rf'$\eta_c = \tau^2/(4(1+\sigma^2))$ = {ode.critical_eta(tau, sigma2):g}; '
               'filled: stable, open: unstable', fontsize=9)
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  return fig


def phase_diagram(ax, x, y, z, xlabel, ylabel, title, cbar_label, cmap='viridis', vmin=None, vmax=None):
  """A heat map of z[len(y), len(x)] with a colour bar."""
  im = ax.pcolormesh(x, y, z, shading='auto', cmap=cmap, vmin=vmin, vmax=vmax)
  ax.figure.colorbar(im, ax=ax, label=cbar_label)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  return im


def alignment_figure(t, metrics_by_name: dict, title=None):
  """Figs. 2 and 9: log s_j, p_j (in F's eigenbasis), ||[F, W_p]||, asymmetry of W_p and Corr(W_a, W)."""
  fig, axes = plt.subplots(1, 5, figsize=(20, 3.6))
  styles = ['-', '--', ':', '-.']
  for k, (name, m) in enumerate(metrics_by_name.items()):
    ls = styles[k % len(styles)]
    n = m['s'].shape[1]
    colors = plt.cm.viridis(np.linspace(0, 0.9, n))
    for j in range(n):
      axes[0].semilogy(t, np.maximum(m['s'][:, j], 1e-12), ls, color=colors[j])
      axes[1].plot(t, m['p'][:, j], ls, color=colors[j])
    axes[2].semilogy(t, np.maximum(m['commutator_rel'], 1e-12), ls, color='k', label=name)
    axes[3].plot(t, m['asymmetry'], ls, color='k', label=name)
    axes[4].plot(t, m['corr_wa_w'], ls, color='k', label=name)
  axes[0].set_ylabel(r'$s_j$, eigenvalues of $F$ (log)')
  axes[1].set_ylabel(r'$p_j = u_j^T W_p u_j$')
  axes[2].set_ylabel(r'$\|[F, W_p]\|_F / (\|F\|\,\|W_p\|)$')
  axes[3].set_ylabel(r'$\|W_p - W_p^T\| / \|W_p\|$')
  axes[4].set_ylabel(r'Corr$(W_a, W)$')
  for ax in axes:
    ax.set_xlabel('t')
    ax.grid(alpha=0.3)
  for ax in axes[2:]:
    ax.legend(fontsize=7)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def grid_values(fn, *arrays):
  """Evaluate a jax function on a grid with vmap (helper for notebooks)."""
  return np.asarray(jax.vmap(fn)(*arrays))
