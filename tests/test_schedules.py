import math

import keras
import numpy as np
import pytest

from keras_transfer.optimizers import schedules


def values(schedule, steps):
    return np.array([float(schedule(step)) for step in steps])


def test_warmup_cosine_values_match_the_formula():
    peak, total, warmup, floor, start = 1e-3, 100, 10, 1e-5, 1e-4
    schedule = schedules.WarmupCosineDecay(
        peak, total_steps=total, warmup_steps=warmup, floor=floor, warmup_start=start
    )

    def expected(t):
        if t < warmup:
            return start + (peak - start) * t / warmup
        t = min(t, total)
        return floor + (peak - floor) * 0.5 * (
            1 + math.cos(math.pi * (t - warmup) / (total - warmup))
        )

    steps = [0, 5, 9, 10, 11, 55, 99, 100, 150]
    np.testing.assert_allclose(values(schedule, steps), [expected(t) for t in steps], rtol=1e-5)
    assert float(schedule(warmup)) == pytest.approx(peak)
    assert float(schedule(total)) == pytest.approx(floor)
    assert float(schedule(10 * total)) == pytest.approx(floor)


def test_warmup_cosine_without_warmup_starts_at_peak():
    schedule = schedules.WarmupCosineDecay(2e-3, total_steps=50)
    assert float(schedule(0)) == pytest.approx(2e-3)
    assert float(schedule(25)) == pytest.approx(1e-3, rel=1e-5)
    assert float(schedule(50)) == pytest.approx(0.0, abs=1e-9)


def test_slanted_triangular_values_match_ulmfit():
    peak, total, cut_frac, ratio = 0.01, 200, 0.1, 32
    schedule = schedules.SlantedTriangular(peak, total, cut_frac=cut_frac, ratio=ratio)
    cut = math.floor(total * cut_frac)

    def expected(t):
        t = min(t, total)
        p = t / cut if t < cut else 1 - (t - cut) / (cut * (1 / cut_frac - 1))
        return peak * (1 + p * (ratio - 1)) / ratio

    steps = [0, 1, 10, 19, 20, 21, 100, 199, 200, 500]
    np.testing.assert_allclose(values(schedule, steps), [expected(t) for t in steps], rtol=1e-5)
    assert float(schedule(0)) == pytest.approx(peak / ratio)
    assert float(schedule(cut)) == pytest.approx(peak)
    assert float(schedule(total)) == pytest.approx(peak / ratio)


def test_one_cycle_values_match_pytorch_onecycle():
    peak, total, pct, div, final_div = 0.1, 100, 0.3, 25.0, 1e4
    schedule = schedules.OneCycle(
        peak, total, pct_start=pct, div_factor=div, final_div_factor=final_div
    )
    initial, final = peak / div, peak / div / final_div
    end_1, end_2 = pct * total - 1, total - 1

    def cos(start, end, f):
        return end + (start - end) / 2 * (math.cos(math.pi * f) + 1)

    def expected(t):
        t = min(t, end_2)
        if t <= end_1:
            return cos(initial, peak, t / end_1)
        return cos(peak, final, (t - end_1) / (end_2 - end_1))

    steps = [0, 10, 29, 30, 64, 98, 99, 120]
    np.testing.assert_allclose(values(schedule, steps), [expected(t) for t in steps], rtol=1e-4)
    assert float(schedule(0)) == pytest.approx(initial)
    assert float(schedule(29)) == pytest.approx(peak)
    assert float(schedule(99)) == pytest.approx(final, rel=1e-4)


def test_one_cycle_linear_anneal():
    schedule = schedules.OneCycle(
        1.0, 11, pct_start=0.5, div_factor=10, final_div_factor=1, anneal="linear"
    )
    # phase 1 ends at step 4.5: linear from 0.1 to 1.0
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(2)) == pytest.approx(0.1 + 0.9 * 2 / 4.5, rel=1e-5)
    assert float(schedule(10)) == pytest.approx(0.1)


ALL = [
    schedules.WarmupCosineDecay(1e-3, total_steps=40, warmup_steps=5, floor=1e-5),
    schedules.SlantedTriangular(1e-3, total_steps=40, cut_frac=0.2, ratio=16),
    schedules.OneCycle(1e-3, total_steps=40, pct_start=0.25, anneal="linear"),
]


@pytest.mark.parametrize("schedule", ALL, ids=lambda s: type(s).__name__)
def test_schedules_round_trip_through_keras_files(schedule, tmp_path):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=schedule), loss="mse")
    model.fit(np.ones((8, 3)), np.ones((8, 1)), epochs=1, batch_size=4, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    restored = keras.saving.load_model(path)  # safe_mode: registered classes only
    # `optimizer.learning_rate` is the current value; the schedule object is `_learning_rate`.
    loaded = restored.optimizer._learning_rate
    assert type(loaded) is type(schedule)
    assert float(restored.optimizer.learning_rate) == pytest.approx(float(schedule(2)))
    assert loaded.get_config() == schedule.get_config()
    steps = [0, 3, 7, 20, 39, 60]
    np.testing.assert_allclose(values(loaded, steps), values(schedule, steps), rtol=1e-6)
    config = keras.optimizers.schedules.serialize(schedule)
    again = keras.optimizers.schedules.deserialize(config)
    np.testing.assert_allclose(values(again, steps), values(schedule, steps), rtol=1e-6)


def test_schedules_work_inside_compiled_fit_with_xla():
    schedule = schedules.OneCycle(1e-2, total_steps=4)
    inputs = keras.Input((3,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.SGD(schedule), loss="mse", jit_compile=True)
    model.fit(np.ones((8, 3)), np.ones((8, 1)), epochs=2, batch_size=4, verbose=0)
    assert int(model.optimizer.iterations) == 4


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda: schedules.WarmupCosineDecay(1e-3, total_steps=10, warmup_steps=10),
            "warmup_steps",
        ),
        (lambda: schedules.WarmupCosineDecay(1e-3, total_steps=10, floor=1e-2), "floor"),
        (lambda: schedules.WarmupCosineDecay(-1.0, total_steps=10), "learning_rate"),
        (lambda: schedules.SlantedTriangular(1e-3, total_steps=5, cut_frac=0.1), "cut_frac"),
        (lambda: schedules.SlantedTriangular(1e-3, total_steps=0), "total_steps"),
        (lambda: schedules.OneCycle(1e-3, total_steps=2, pct_start=0.3), "phase"),
        (lambda: schedules.OneCycle(1e-3, total_steps=100, anneal="exp"), "anneal"),
    ],
)
def test_bad_arguments_are_clear_errors(make, message):
    with pytest.raises(ValueError, match=message):
        make()
