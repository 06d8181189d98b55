"""Analytic solids for :mod:`pipeline.phantom`: inside-tests on coordinate arrays (mm).

Every shape has an axis-aligned box ``(lo, hi)`` that bounds it: the sampler evaluates a shape
only on the voxels whose centres can fall in that box, which keeps thin structures (ribs,
vessels) cheap on any grid orientation.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

BIG = 1e4  # "unbounded" extent along an axis


def rotation(deg_xyz) -> np.ndarray:
    """Rotation matrix Rz @ Ry @ Rx from angles in degrees about x, y, z."""
    ax, ay, az = np.radians(np.asarray(deg_xyz, dtype=np.float64))
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class Shape:
    lo: np.ndarray
    hi: np.ndarray

    def contains(self, x, y, z) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __and__(self, other: "Shape") -> "Shape":
        return Where(lambda x, y, z: self.contains(x, y, z) & other.contains(x, y, z),
                     np.maximum(self.lo, other.lo), np.minimum(self.hi, other.hi))

    def __sub__(self, other: "Shape") -> "Shape":
        return Where(lambda x, y, z: self.contains(x, y, z) & ~other.contains(x, y, z), self.lo, self.hi)


class Where(Shape):
    """Any predicate ``fn(x, y, z) -> bool array``, restricted to the box (lo, hi)."""

    def __init__(self, fn, lo, hi):
        self.fn, self.lo, self.hi = fn, np.asarray(lo, float), np.asarray(hi, float)

    def contains(self, x, y, z):
        inside = self.fn(x, y, z)
        for c, lo, hi in ((x, self.lo[0], self.hi[0]), (y, self.lo[1], self.hi[1]), (z, self.lo[2], self.hi[2])):
            if lo > -BIG:
                inside = inside & (c >= lo)
            if hi < BIG:
                inside = inside & (c <= hi)
        return inside


class Ellipsoid(Shape):
    """Ellipsoid with semi-axes ``semi`` along its own axes, rotated by ``rot_deg`` (x, y, z)."""

    def __init__(self, center, semi, rot_deg=(0.0, 0.0, 0.0)):
        self.c = np.asarray(center, float)
        self.s = np.asarray(semi, float)
        self.r = rotation(rot_deg)
        half = np.sqrt(((self.r * self.s) ** 2).sum(axis=1))
        self.lo, self.hi = self.c - half, self.c + half

    def contains(self, x, y, z):
        d = (x - self.c[0], y - self.c[1], z - self.c[2])
        acc = 0.0
        for n in range(3):
            q = d[0] * self.r[0, n] + d[1] * self.r[1, n] + d[2] * self.r[2, n]
            acc = acc + (q / self.s[n]) ** 2
        return acc <= 1.0

    def grown(self, mm: float) -> "Ellipsoid":
        e = Ellipsoid(self.c, self.s + mm)
        e.r = self.r
        half = np.sqrt(((e.r * e.s) ** 2).sum(axis=1))
        e.lo, e.hi = e.c - half, e.c + half
        return e


class Prism(Shape):
    """Superellipse ``|dx/a|^p + |dy/b|^p <= 1`` extruded along z between ``z0`` and ``z1``."""

    def __init__(self, cx, cy, a, b, p=2.0, z0=-BIG, z1=BIG):
        self.cx, self.cy, self.a, self.b, self.p, self.z0, self.z1 = cx, cy, a, b, p, z0, z1
        self.lo, self.hi = np.array([cx - a, cy - b, z0]), np.array([cx + a, cy + b, z1])

    def contains(self, x, y, z):
        inside = np.abs((x - self.cx) / self.a) ** self.p + np.abs((y - self.cy) / self.b) ** self.p <= 1.0
        if self.z0 > -BIG or self.z1 < BIG:
            inside &= (z >= self.z0) & (z <= self.z1)
        return inside

    def point(self, phi_deg: float) -> np.ndarray:
        """(x, y) on the outline at angle ``phi`` (0 = +x Left, 90 = +y Posterior)."""
        c, s = math.cos(math.radians(phi_deg)), math.sin(math.radians(phi_deg))
        e = 2.0 / self.p
        return np.array([self.cx + self.a * math.copysign(abs(c) ** e, c),
                         self.cy + self.b * math.copysign(abs(s) ** e, s)])


class Box(Shape):
    def __init__(self, lo, hi):
        self.lo, self.hi = np.asarray(lo, float), np.asarray(hi, float)

    def contains(self, x, y, z):
        return ((x >= self.lo[0]) & (x <= self.hi[0]) & (y >= self.lo[1]) & (y <= self.hi[1])
                & (z >= self.lo[2]) & (z <= self.hi[2]))


class Capsule(Shape):
    """Points within ``r`` of the segment p0-p1."""

    def __init__(self, p0, p1, r):
        self.p0, self.p1, self.rad = np.asarray(p0, float), np.asarray(p1, float), float(r)
        self.lo = np.minimum(self.p0, self.p1) - r
        self.hi = np.maximum(self.p0, self.p1) + r

    def contains(self, x, y, z):
        d = self.p1 - self.p0
        L2 = float(d @ d) or 1e-12
        px, py, pz = x - self.p0[0], y - self.p0[1], z - self.p0[2]
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / L2, 0.0, 1.0)
        return (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2 <= self.rad ** 2


def tube(points: Sequence[Sequence[float]], r: float) -> list[Capsule]:
    """A tube of radius ``r`` along a polyline: one capsule per segment (each painted in its own box)."""
    pts = np.asarray(points, float)
    return [Capsule(pts[n], pts[n + 1], r) for n in range(len(pts) - 1)]
