"""The engine's LLVM intrinsics, each with its scalar fallback: what numba does not emit alone.

* :func:`popcount64` (``ctpop``) and :func:`read_cycles` (``readcyclecounter``): every CPU;
* AVX-512 only (:data:`AVX512`, decided once per process from the host's features; the
  fallbacks compile everywhere else): :func:`window_rows` + :func:`window_bits8` (a pooling
  window's 4 x 4 input words in two zmm tables, each output's word picked by ``vpermi2q``,
  8 outputs' pooled sign bits per call) and :func:`select16_counts` (one word per output
  picked from <= 16 input words).  The public names are ``overload``-ed stubs: numba inlines
  the intrinsic or the scalar loop into the caller.
"""

from __future__ import annotations

import time

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload


@intrinsic
def popcount64(typingctx, x):
  """Hardware popcount of a uint64 as int64 (LLVM ``ctpop``)."""
  sig = types.int64(types.uint64)

  def codegen(context, builder, signature, args):
    return builder.ctpop(args[0])

  return sig, codegen


@intrinsic
def read_cycles(typingctx):
  """The CPU's time-stamp counter (LLVM ``readcyclecounter``: ``rdtsc`` on x86)."""
  sig = types.int64()

  def codegen(context, builder, signature, args):
    fnty = ir.FunctionType(ir.IntType(64), [])
    fn = builder.module.declare_intrinsic("llvm.readcyclecounter", fnty=fnty)
    return builder.call(fn, [])

  return sig, codegen


@njit(cache=True)
def cycles_now():
  return read_cycles()


_TSC_HZ: list = []


def tsc_hz() -> float:
  """Time-stamp counter ticks per second (measured once per process over 20 ms)."""
  if not _TSC_HZ:
    c0, t0 = cycles_now(), time.perf_counter()
    time.sleep(0.02)
    c1, t1 = cycles_now(), time.perf_counter()
    _TSC_HZ.append((c1 - c0) / (t1 - t0))
  return _TSC_HZ[0]


@njit(cache=True, inline="always")
def pool_bit32(na, nb, nc, nd, um, nlo, nhi):
  """The bit of ``sign(bn(max_pool2(.)))`` from the window's 4 integers ``n``: one pixel's bit
  is ``s * n >= t``, taken in int32 as the bounds ``nlo <= n <= nhi`` (:func:`sign_bounds`: no
  multiply, so that LLVM vectorises it over the outputs); the OR of the window's bits is that of
  the window's extreme ``n`` in the rule's direction (``um``: ``max(n)``, else ``min(n)``)."""
  na, nb, nc, nd = np.int32(na), np.int32(nb), np.int32(nc), np.int32(nd)
  mx = max(max(na, nb), max(nc, nd))
  mn = min(min(na, nb), min(nc, nd))
  v = mx if um != 0 else mn
  return np.uint8((v >= nlo) & (v <= nhi))


def host_has_avx512() -> bool:
  """Whether numba compiles for this CPU with AVX-512F (the host's features, no override of
  numba's target CPU): the window path of :func:`bconv_sign_pool_range` (``opts[8]``,
  :func:`window_bits8`) is enabled, and its intrinsics compiled, only then."""
  from numba.core import config

  if config.CPU_NAME or config.CPU_FEATURES:
    return False
  try:
    import llvmlite.binding as ll

    return bool(ll.get_host_cpu_features().get("avx512f", False))
  except Exception:
    return False


AVX512 = host_has_avx512()


@intrinsic
def _rows4_avx512(typingctx, xf, base, stride):
  """The 4 words at ``xf[base + r * stride]`` for rows ``r`` = 0..3 (16 uint64): a pooling
  window's 3x3 patches (stride 1, one word per pixel) lie in these 4 x 4 words."""
  sig = types.UniTuple(types.uint64, 16)(xf, base, stride)

  def codegen(context, builder, signature, args):
    xa, b, st = args
    i64 = ir.IntType(64)
    v4 = ir.VectorType(i64, 4)
    data = context.make_array(signature.args[0])(context, builder, xa).data
    tup = context.get_constant_undef(signature.return_type)
    for r in range(4):
      off = builder.add(b, builder.mul(st, ir.Constant(i64, r)))
      v = builder.load(builder.bitcast(builder.gep(data, [off]), v4.as_pointer()), align=8)
      for c in range(4):
        tup = builder.insert_value(tup, builder.extract_element(v, ir.Constant(i64, c)), 4 * r + c)
    return tup

  return sig, codegen


@intrinsic
def _window_bits8_avx512(typingctx, k, w, m, kbz, rows, um, nlo, nhi, o, o_s, tab):
  """The byte of the pooled bits of outputs ``o .. o + 7`` (bit j: output ``o + j``) of a
  window whose 4 x 4 words are ``tab`` (:func:`_rows4_avx512`): each output's word of pixel
  (0, 0) is ``tab[k[o + j]]`` (``k = 4 row + col`` of its tap), of pixels (0, 1), (1, 0),
  (1, 1) ``tab[k + 1]``, ``tab[k + 4]``, ``tab[k + 5]``: one two-table permute per pixel
  (``vpermi2q``), ``vpopcntq``, then ``n = kbz[rows[r], o + j] - 2 popcount`` and
  :func:`pool_bit32` in int32 vectors (``kbz`` int32 ``[., o_s]`` C-contiguous, ``nlo``,
  ``nhi`` int32, ``um`` uint8; ``k``, ``w``, ``m``: row 0 of uint64 arrays)."""
  sig = types.uint8(k, w, m, kbz, rows, um, nlo, nhi, o, o_s, tab)

  def codegen(context, builder, signature, args):
    ka, wa, ma, kba, rws, uma, loa, hia, oo, os_, tv = args
    aty = signature.args
    i64, i32, i8 = ir.IntType(64), ir.IntType(32), ir.IntType(8)
    v8, v8i32, v8i8 = ir.VectorType(i64, 8), ir.VectorType(i32, 8), ir.VectorType(i8, 8)
    mod = builder.module

    def vload(ty, val, off, vt):
      data = context.make_array(ty)(context, builder, val).data
      return builder.load(builder.bitcast(builder.gep(data, [off]), vt.as_pointer()), align=1)

    def decl(name, fnty):
      return mod.globals.get(name) or ir.Function(mod, fnty, name)

    kv, wv, mv = (vload(aty[i], a, oo, v8) for i, a in ((0, ka), (1, wa), (2, ma)))
    ctpop = decl("llvm.ctpop.v8i64", ir.FunctionType(v8, [v8]))
    perm = decl("llvm.x86.avx512.vpermi2var.q.512", ir.FunctionType(v8, [v8, v8, v8]))
    tabs = [ir.Constant(v8, ir.Undefined), ir.Constant(v8, ir.Undefined)]
    for f in range(16):
      x = builder.extract_value(tv, f)
      tabs[f // 8] = builder.insert_element(tabs[f // 8], x, ir.Constant(i64, f % 8))
    ns = []
    for r, d in enumerate((0, 1, 4, 5)):
      idx = builder.add(kv, ir.Constant(v8, [d] * 8)) if d else kv
      sel = builder.call(perm, [tabs[0], idx, tabs[1]])
      pc = builder.trunc(builder.call(ctpop, [builder.and_(builder.xor(sel, wv), mv)]), v8i32)
      row = builder.extract_value(rws, r)
      kb = vload(aty[3], kba, builder.add(builder.mul(row, os_), oo), v8i32)
      ns.append(builder.sub(kb, builder.shl(pc, ir.Constant(v8i32, [1] * 8))))

    def vmax(a, b):
      return builder.select(builder.icmp_signed(">", a, b), a, b)

    def vmin(a, b):
      return builder.select(builder.icmp_signed("<", a, b), a, b)

    mx = vmax(vmax(ns[0], ns[1]), vmax(ns[2], ns[3]))
    mn = vmin(vmin(ns[0], ns[1]), vmin(ns[2], ns[3]))
    use_max = builder.icmp_unsigned("!=", vload(aty[5], uma, oo, v8i8), ir.Constant(v8i8, None))
    v = builder.select(use_max, mx, mn)
    lo = builder.icmp_signed(">=", v, vload(aty[6], loa, oo, v8i32))
    hi = builder.icmp_signed("<=", v, vload(aty[7], hia, oo, v8i32))
    return builder.bitcast(builder.and_(lo, hi), i8)

  return sig, codegen


def window_rows(xf, base, stride):
  """See :func:`_rows4_avx512` (scalar loads on CPUs without AVX-512F)."""
  raise NotImplementedError


@overload(window_rows, inline="always")
def _window_rows_impl(xf, base, stride):
  if AVX512:
    return lambda xf, base, stride: _rows4_avx512(xf, base, stride)

  def scalar(xf, base, stride):
    b0, b1, b2, b3 = base, base + stride, base + 2 * stride, base + 3 * stride
    return (
      *(xf[b0], xf[b0 + 1], xf[b0 + 2], xf[b0 + 3]),
      *(xf[b1], xf[b1 + 1], xf[b1 + 2], xf[b1 + 3]),
      *(xf[b2], xf[b2 + 1], xf[b2 + 2], xf[b2 + 3]),
      *(xf[b3], xf[b3 + 1], xf[b3 + 2], xf[b3 + 3]),
    )

  return scalar


def window_bits8(k, w, m, kbz, rows, um, nlo, nhi, o, o_s, tab):
  """See :func:`_window_bits8_avx512` (a scalar loop on CPUs without AVX-512F)."""
  raise NotImplementedError


@overload(window_bits8, inline="always")
def _window_bits8_impl(k, w, m, kbz, rows, um, nlo, nhi, o, o_s, tab):
  if AVX512:

    def impl(k, w, m, kbz, rows, um, nlo, nhi, o, o_s, tab):
      return _window_bits8_avx512(k, w, m, kbz, rows, um, nlo, nhi, o, o_s, tab)

    return impl

  def scalar(k, w, m, kbz, rows, um, nlo, nhi, o, o_s, tab):
    byte = np.uint8(0)
    for j in range(8):
      kj, wj, mj = np.int64(k[0, o + j]), w[0, o + j], m[0, o + j]
      na = kbz[rows[0], o + j] - 2 * popcount64((tab[kj] ^ wj) & mj)
      nb = kbz[rows[1], o + j] - 2 * popcount64((tab[kj + 1] ^ wj) & mj)
      nc = kbz[rows[2], o + j] - 2 * popcount64((tab[kj + 4] ^ wj) & mj)
      nd = kbz[rows[3], o + j] - 2 * popcount64((tab[kj + 5] ^ wj) & mj)
      byte |= pool_bit32(na, nb, nc, nd, um[o + j], nlo[o + j], nhi[o + j]) << np.uint8(j)
    return byte

  return scalar


@intrinsic
def _select16_avx512(typingctx, xw, idx, w, acc):
  """``acc[o] = popcount(xw[idx[0, o]] XOR w[0, o])`` for ``o < 8 (O // 8)`` (``acc`` int32
  ``[O]``, ``idx`` int64 and ``w`` uint64 ``[1, O]`` C-contiguous, ``idx < 16``): the <= 16
  words of ``xw`` (missing ones zero) held in two zmm registers, each output's word picked by
  a two-table permute (``vpermt2q``), 8 outputs per instruction, then ``vpopcntq``."""
  sig = types.void(xw, idx, w, acc)

  def codegen(context, builder, signature, args):
    xa, ia, wa, aa = args
    aty = signature.args
    i64, i32 = ir.IntType(64), ir.IntType(32)
    v8, v8i32 = ir.VectorType(i64, 8), ir.VectorType(i32, 8)
    mod = builder.module

    def decl(name, fnty):
      return mod.globals.get(name) or ir.Function(mod, fnty, name)

    ctpop = decl("llvm.ctpop.v8i64", ir.FunctionType(v8, [v8]))
    perm = decl("llvm.x86.avx512.vpermi2var.q.512", ir.FunctionType(v8, [v8, v8, v8]))
    xarr = context.make_array(aty[0])(context, builder, xa)
    n_in = builder.extract_value(xarr.shape, 0)
    xdata = xarr.data
    tabs = [ir.Constant(v8, [0] * 8), ir.Constant(v8, [0] * 8)]
    last = builder.sub(n_in, ir.Constant(i64, 1))
    for f in range(16):
      fc = ir.Constant(i64, f)
      inside = builder.icmp_signed("<", fc, n_in)
      x = builder.load(builder.gep(xdata, [builder.select(inside, fc, last)]))
      x = builder.select(inside, x, ir.Constant(i64, 0))
      tabs[f // 8] = builder.insert_element(tabs[f // 8], x, ir.Constant(i64, f % 8))
    idata = context.make_array(aty[1])(context, builder, ia).data
    wdata = context.make_array(aty[2])(context, builder, wa).data
    aarr = context.make_array(aty[3])(context, builder, aa)
    adata = aarr.data
    n8 = builder.sdiv(builder.extract_value(aarr.shape, 0), ir.Constant(i64, 8))
    with cgutils.for_range(builder, n8) as loop:
      o = builder.mul(loop.index, ir.Constant(i64, 8))

      def vload(data, vt):
        return builder.load(builder.bitcast(builder.gep(data, [o]), vt.as_pointer()), align=1)

      sel = builder.call(perm, [tabs[0], vload(idata, v8), tabs[1]])
      pc = builder.trunc(builder.call(ctpop, [builder.xor(sel, vload(wdata, v8))]), v8i32)
      builder.store(pc, builder.bitcast(builder.gep(adata, [o]), v8i32.as_pointer()), align=1)
    return context.get_dummy_value()

  return sig, codegen


def select16_counts(xw, idx, w, acc):
  """``acc[o] = popcount(xw[idx[0, o]] XOR w[0, o])``: :func:`_select16_avx512` on 8
  outputs at a time and a scalar tail (a scalar gather on CPUs without AVX-512F)."""
  raise NotImplementedError


@overload(select16_counts, inline="always")
def _select16_counts_impl(xw, idx, w, acc):
  if AVX512:

    def impl(xw, idx, w, acc):
      _select16_avx512(xw, idx, w, acc)
      for o in range(acc.shape[0] // 8 * 8, acc.shape[0]):
        acc[o] = popcount64(xw[idx[0, o]] ^ w[0, o])

    return impl

  def scalar(xw, idx, w, acc):
    for o in range(acc.shape[0]):
      acc[o] = popcount64(xw[idx[0, o]] ^ w[0, o])

  return scalar
