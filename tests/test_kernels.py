"""Tests for s3rec_jax.ops.kernels: the native CPU full ranking and catalogue softmax against the
XLA scans and numpy."""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P

from s3rec_jax.evaluation import metrics
from s3rec_jax import objectives
from s3rec_jax.ops import catalogue_softmax
from s3rec_jax.ops import kernels
from s3rec_jax.training import config_validation

pytestmark = pytest.mark.skipif(
    kernels.compiler() is None, reason="no C++ compiler here (set CXX or install g++): the "
    "fused_cpu kernel cannot be built")


def _numpy_ranking(user, table, answers, history, num_items, top_k):
  """Independent reference in float64: rank = other candidates scoring >= the answer; the
  top-k by score, then lowest id; candidates are 1..num_items minus history other than the
  answer."""
  scores = user.astype(np.float64) @ table.astype(np.float64).T
  ranks, items, best = [], [], []
  for b in range(user.shape[0]):
    excluded = {int(h) for h in history[b] if h > 0 and h != answers[b]}
    candidates = [j for j in range(1, num_items + 1) if j not in excluded]
    answer = scores[b, answers[b]]
    ranks.append(sum(1 for j in candidates if j != answers[b] and scores[b, j] >= answer))
    order = sorted(candidates, key=lambda j: (-scores[b, j], j))[:top_k]
    order += [0] * (top_k - len(order))
    items.append(order)
    best.append([scores[b, j] if j else -np.inf for j in order])
  return np.array(ranks), np.array(items, int).reshape(-1, top_k), np.array(best).reshape(-1, top_k)


def _grid_problem(seed, users=13, items=300, hidden=24, history=6, extra_rows=2):
  """Embeddings on a 1/4 grid, so float32 dots are exact in any summation order (the scan
  and the kernel must then agree bit for bit, ties included)."""
  rng = np.random.default_rng(seed)
  user = (rng.integers(-3, 4, (users, hidden)) / 4).astype(np.float32)
  table = (rng.integers(-3, 4, (items + extra_rows, hidden)) / 4).astype(np.float32)
  answers = rng.integers(1, items + 1, users).astype(np.int32)
  table[7] = table[answers[0]]             # a row identical to an answer: a tie
  hist = rng.integers(0, items + 1, (users, history)).astype(np.int32)
  hist[1, 0] = answers[1]                   # the answer in its own history stays a candidate
  hist[2, :3] = hist[2, 0]                  # repeats
  return user, table, answers, hist


def _rank(method, top_k, num_items, *arrays, chunk_size=64):
  fn = jax.jit(functools.partial(metrics.full_ranking, num_items=num_items, chunk_size=chunk_size,
                                 top_k=top_k, method=method))
  return [np.asarray(x) for x in fn(*arrays)]


@pytest.mark.parametrize("top_k", [0, 1, 5, 20])
def test_fused_cpu_equals_the_scan_and_numpy_on_exact_scores(top_k):
  user, table, answers, hist = _grid_problem(0)
  num_items = table.shape[0] - 2            # the last row (a mask token) is never a candidate
  fused = _rank("fused_cpu", top_k, num_items, user, table, answers, hist)
  scan = _rank("scan", top_k, num_items, user, table, answers, hist)
  for a, b in zip(fused, scan):
    np.testing.assert_array_equal(a, b)
  ranks, items, best = _numpy_ranking(user, table, answers, hist, num_items, max(top_k, 1))
  np.testing.assert_array_equal(fused[0], ranks)
  if top_k:
    np.testing.assert_array_equal(fused[1], items[:, :top_k])
    np.testing.assert_array_equal(fused[2], best[:, :top_k].astype(np.float32))
  # The grid makes many exact ties with the answer; they count against it.
  assert fused[0][0] >= 1


def test_fused_cpu_ties_of_rows_identical_to_the_answer_count_against_it():
  """Raw float rows (no grid): copies of the answer's row score exactly the answer's score."""
  rng = np.random.default_rng(1)
  hidden, items = 64, 500
  user = rng.standard_normal((9, hidden)).astype(np.float32)
  table = rng.standard_normal((items + 1, hidden)).astype(np.float32)
  answers = np.full(9, 10, np.int32)
  table[[3, 250, 499]] = table[10]
  hist = np.zeros((9, 2), np.int32)
  hist[0] = [250, 0]                          # an excluded copy does not count
  ranks, _, scores = _rank("fused_cpu", 5, items, user, table, answers, hist)
  dots = user.astype(np.float64) @ table.astype(np.float64).T
  above = (dots[:, 1:] > dots[:, 10:11]).sum(axis=1)
  expected = above + 3 - (np.arange(9) == 0)  # three copies, one excluded for user 0
  np.testing.assert_array_equal(ranks, expected)
  assert np.all(np.isfinite(scores))


def test_fused_cpu_nan_answer_loses_to_every_candidate_and_short_lists_pad():
  user, table, answers, hist = _grid_problem(2, users=6, items=8, hidden=4, history=3)
  user[3, 0] = np.nan
  num_items = 8
  fused = _rank("fused_cpu", 12, num_items, user, table, answers, hist)
  scan = _rank("scan", 12, num_items, user, table, answers, hist)
  np.testing.assert_array_equal(fused[0], scan[0])
  np.testing.assert_array_equal(fused[1], scan[1])
  np.testing.assert_array_equal(fused[2], scan[2])
  # Fewer than 12 candidates: the tail is id 0 with score -inf.
  assert np.all(fused[1][:, -1] == 0) and np.all(fused[2][:, -1] == -np.inf)
  excluded = len({h for h in hist[3] if h > 0 and h != answers[3]})
  assert fused[0][3] == num_items - 1 - excluded


@pytest.mark.parametrize("devices", [2, 4])
def test_fused_cpu_with_the_catalogue_split_over_devices(devices):
  if len(jax.devices()) < devices:
    pytest.skip(f"needs {devices} devices")
  user, table, answers, hist = _grid_problem(3, users=11, items=301, hidden=16, extra_rows=3)
  num_items = 301
  rows = -(-table.shape[0] // devices) * devices
  table = np.pad(table, ((0, rows - table.shape[0]), (0, 0)))
  mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
  got = {}
  for method in ("fused_cpu", "scan"):
    body = functools.partial(metrics.full_ranking, num_items=num_items, chunk_size=32, top_k=7,
                             axis_name="data", method=method)
    fn = jax.jit(jax.shard_map(body, mesh=mesh, in_specs=(P(), P("data"), P(), P()),
                               out_specs=P(), check_vma=False))
    got[method] = [np.asarray(x) for x in fn(user, table, answers, hist)]
  whole = _rank("fused_cpu", 7, num_items, user, table[:num_items + 2], answers, hist)
  for a, b, c in zip(got["fused_cpu"], got["scan"], whole):
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_a_kernel_library_is_cached_and_a_broken_compiler_is_one_clear_error(tmp_path,
                                                                             monkeypatch):
  monkeypatch.setenv("S3REC_KERNEL_CACHE", str(tmp_path / "cache"))
  source = os.path.join(os.path.dirname(kernels.__file__), "full_ranking_cpu.cc")
  first = kernels._build(source, kernels.compiler())
  assert os.path.exists(first) and kernels._build(source, kernels.compiler()) == first
  assert [f for f in os.listdir(tmp_path / "cache") if f.startswith(".")] == []
  broken = tmp_path / "broken.cc"
  broken.write_text("this is not C++\n")
  with pytest.raises(kernels.KernelUnavailable, match="compiling broken.cc failed"):
    kernels._build(str(broken), kernels.compiler())
  assert [f for f in os.listdir(tmp_path / "cache") if "broken" in f] == []
  (tmp_path / "file").write_text("")
  monkeypatch.setenv("S3REC_KERNEL_CACHE", str(tmp_path / "file" / "cache"))
  with pytest.raises(kernels.KernelUnavailable, match="cannot write the kernel cache"):
    kernels._build(source, kernels.compiler())


def test_config_names_the_ranking_method():
  from s3rec_jax.configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  assert config.eval.ranking == "scan"        # the default stays the XLA scan
  config.eval.ranking = "fused_cpu"
  config_validation.validate(config)
  config.eval.ranking = "fast"
  with pytest.raises(config_validation.ConfigError, match="eval.ranking='fast' is unknown"):
    config_validation.validate(config)
  old = ml_collections.ConfigDict(default.get_config().to_dict())
  del old.eval["ranking"]                     # a run recorded before the option
  config_validation.validate(old)


# ---------------------------------------------------------------------------
# The catalogue softmax (settings.next_item.ce_method=fused_cpu).


def _ce_problem(seed, queries, items, hidden, extra_rows=2):
  rng = np.random.default_rng(seed)
  q = rng.standard_normal((queries, hidden)).astype(np.float32)
  table = (0.5 * rng.standard_normal((items + extra_rows, hidden))).astype(np.float32)
  targets = rng.integers(1, items + 1, queries).astype(np.int32)
  weights = rng.random(queries).astype(np.float32)
  weights[::5] = 0.0                          # padded positions: no cotangent
  return q, table, targets, weights


def _ce_value_and_grads(method, q, table, targets, weights, num_items):
  def total(q, t):
    return jnp.sum(weights * catalogue_softmax.cross_entropy(
        q, t, targets, num_items=num_items, chunk_size=64, method=method))
  value, grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(q, table)
  return [np.asarray(value)] + [np.asarray(g) for g in grads]


@pytest.mark.parametrize("queries,items,hidden", [(13, 300, 16), (50, 1000, 64), (7, 70, 32),
                                                  (1, 1, 16)])
def test_fused_cpu_cross_entropy_equals_the_scan_and_numpy(queries, items, hidden):
  q, table, targets, weights = _ce_problem(0, queries, items, hidden)
  fused = _ce_value_and_grads("fused_cpu", q, table, targets, weights, items)
  scan = _ce_value_and_grads("scan", q, table, targets, weights, items)
  for a, b in zip(fused, scan):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # The loss and its gradients by hand in float64 (rows past num_items never count).
  logits = q.astype(np.float64) @ table[1:items + 1].astype(np.float64).T
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  lse = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
  want = np.sum(weights * (lse - logits[np.arange(queries), targets - 1]))
  np.testing.assert_allclose(fused[0], want, rtol=1e-5)
  onehot = np.zeros_like(p)
  onehot[np.arange(queries), targets - 1] = 1
  dq = weights[:, None] * ((p - onehot) @ table[1:items + 1])
  np.testing.assert_allclose(fused[1], dq, rtol=1e-4, atol=1e-5)
  assert np.all(fused[2][0] == 0) and np.all(fused[2][items + 1:] == 0)


@pytest.mark.parametrize("devices", [2, 4])
def test_fused_cpu_cross_entropy_with_the_table_split_over_devices(devices):
  if len(jax.devices()) < devices:
    pytest.skip(f"needs {devices} devices")
  # 20 items in 4 blocks of 16 rows: the last blocks hold no candidate at all.
  items, hidden, rows = 20, 16, 16 * devices
  q, table, targets, weights = _ce_problem(1, 4 * devices, items, hidden,
                                           extra_rows=rows - items)
  mesh = Mesh(np.array(jax.devices()[:devices]), ("data",))
  got = {}
  for method in ("fused_cpu", "scan"):
    def local(q, t, y, w, method=method):
      def total(q, t):
        return jnp.sum(w * catalogue_softmax.cross_entropy(q, t, y, num_items=items,
                                                           chunk_size=8, axis_name="data",
                                                           method=method))
      value, (dq, dt) = jax.value_and_grad(total, argnums=(0, 1))(q, t)
      return jax.lax.psum(value, "data")[None], dq, dt
    fn = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data"), P("data"),
                                                           P("data")),
                               out_specs=(P(), P("data"), P("data")), check_vma=False))
    got[method] = [np.asarray(x) for x in fn(q, table, targets, weights)]
  whole = _ce_value_and_grads("fused_cpu", q, table[:items + 2], targets, weights, items)
  for a, b in zip(got["fused_cpu"], got["scan"]):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got["fused_cpu"][0][0], whole[0], rtol=1e-5)
  np.testing.assert_allclose(got["fused_cpu"][2][:items + 2], whole[2], rtol=1e-5, atol=1e-6)


def test_fused_cpu_cross_entropy_in_the_next_item_objective():
  """settings.next_item.ce_method reaches the `ce` form; ill-fitting configs are one line."""
  rng = np.random.default_rng(2)
  out = jnp.asarray(rng.standard_normal((3, 5, 16)).astype(np.float32))
  table = jnp.asarray(rng.standard_normal((42, 16)).astype(np.float32))
  targets = jnp.asarray(rng.integers(0, 41, (3, 5)).astype(np.int32))
  loss = objectives.get("next_item", "ce").fn

  def total(method):
    options = objectives.ObjectiveOptions(
        mask_id=41, num_items=40,
        settings=objectives.settings_tuple({"next_item": {"ce_method": method}}))
    return jax.jit(jax.value_and_grad(lambda o, t: loss(objectives.ObjectiveInputs(
        {"sequence": o}, {"item_embeddings": {"embedding": t}}, {"targets": targets}, {},
        jax.random.key(0), options)), argnums=(0, 1)))

  (a, ga), (b, gb) = total("fused_cpu")(out, table), total("scan")(out, table)
  assert "s3rec_catalogue_lse_cpu" in total("fused_cpu").lower(out, table).as_text()
  np.testing.assert_allclose(a, b, rtol=1e-5)
  for x, y in zip(ga, gb):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
  from s3rec_jax.configs import default  # pylint: disable=import-outside-toplevel
  config = default.get_config()
  assert config.settings.next_item.ce_method == "scan"
  config.settings.next_item.ce_method = "fused_cpu"
  config_validation.validate(config)
  config.model.hidden_size = 24
  config.model.num_heads = 2
  with pytest.raises(config_validation.ConfigError, match="multiple of 16, got 24"):
    config_validation.validate(config)
  config.model.hidden_size = 64
  config.model.compute_dtype = "bfloat16"
  with pytest.raises(config_validation.ConfigError, match="computes in float32"):
    config_validation.validate(config)


def test_kernels_split_over_threads_give_the_one_thread_results(monkeypatch):
  """Several threads per call (one device's share of the cores): users, queries or blocks
  split over XLA's pool give what one thread gives."""
  user, table, answers, hist = _grid_problem(4, users=700, items=3000, hidden=32)
  q, ce_table, targets, weights = _ce_problem(5, 400, 3000, 32)
  got = []
  for threads in ("1", "3"):
    monkeypatch.setenv("S3REC_KERNEL_THREADS", threads)
    ranking = _rank("fused_cpu", 10, 3000, user, table, answers, hist)
    ce = _ce_value_and_grads("fused_cpu", q, ce_table, targets, weights, 3000)
    got.append((ranking, ce))
  for a, b in zip(got[0][0], got[1][0]):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(got[0][1], got[1][1]):   # the query gradient summed over parts
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("march", ["haswell", "x86-64"])
def test_the_avx2_and_portable_builds_pass_the_kernel_tests(march, tmp_path):
  """The kernels' AVX2 (haswell) and one-lane (x86-64) paths, built here and run through this
  file's other tests in a subprocess (about 20 s each, so only on request)."""
  if not os.environ.get("S3REC_TEST_ISAS"):
    pytest.skip("set S3REC_TEST_ISAS=1 to build and test the AVX2 and portable kernel paths "
                "(about 20 s each)")
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  env = dict(os.environ, S3REC_KERNEL_MARCH=march, S3REC_KERNEL_CACHE=str(tmp_path),
             S3REC_TEST_ISAS="")
  result = subprocess.run(
      [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__, "-k",
       "not avx2_and_portable and not cache"], env=env, capture_output=True, text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert result.returncode == 0, result.stdout[-3000:]
  assert [f for f in os.listdir(tmp_path) if f.endswith(".so")], "nothing was built"
