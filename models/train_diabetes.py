"""Train the example model `diabetes` version 1, deterministically, on synthetic vitals this script generates.

    python models/train_diabetes.py            # writes models/diabetes/1/model.keras

The data are synthetic (no real patient is behind them). Each of 4,000 patients has
heart rate ~ N(75, 12²) BPM, systolic blood pressure ~ N(125, 18²) mm Hg and temperature ~ N(37.0, 0.5²) °C
(numpy seed 0), and is diabetic (class 1) with probability sigmoid(z),

    z = 0.06·(heart rate − 75) + 0.04·(systolic − 125) + 1.2·(temperature − 37) − 0.2,

so every vital raises the risk, as in the seed's story. The model is
`vitals (-1, 3) -> Normalization (adapted to the data) -> Dense(8, relu) -> Dense(2, softmax) = probabilities`,
trained with Adam for 40 epochs under fixed seeds and TensorFlow's deterministic ops; it runs in
float32 and takes raw vitals (the normalisation is part of the model).
"""

from __future__ import annotations

import os
import pathlib
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

SEED = 0
PATIENTS = 4000
MEANS = np.array([75.0, 125.0, 37.0])
STDDEVS = np.array([12.0, 18.0, 0.5])
RISK_PER_UNIT = np.array([0.06, 0.04, 1.2])
RISK_OFFSET = -0.2
EPOCHS = 40
OUT = pathlib.Path(__file__).resolve().parent / "diabetes" / "1" / "model.keras"


def synthetic_vitals(patients: int = PATIENTS, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """(vitals (patients, 3) float32, diabetic (patients,) int64) drawn by the rule in the module docstring."""
    rng = np.random.default_rng(seed)
    vitals = rng.normal(MEANS, STDDEVS, size=(patients, 3))
    risk = (vitals - MEANS) @ RISK_PER_UNIT + RISK_OFFSET
    diabetic = rng.random(patients) < 1.0 / (1.0 + np.exp(-risk))
    return vitals.astype(np.float32), diabetic.astype(np.int64)


def build(vitals: np.ndarray) -> keras.Model:
    inputs = keras.Input(shape=(3,), name="vitals")
    normalization = keras.layers.Normalization(name="normalization")
    normalization.adapt(vitals)
    hidden = keras.layers.Dense(8, activation="relu", name="hidden")(normalization(inputs))
    probabilities = keras.layers.Dense(2, activation="softmax", name="probabilities")(hidden)
    return keras.Model(inputs, probabilities, name="diabetes")


def main() -> int:
    keras.utils.set_random_seed(SEED)
    tf.config.experimental.enable_op_determinism()
    vitals, diabetic = synthetic_vitals()
    model = build(vitals)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    history = model.fit(vitals, diabetic, batch_size=64, epochs=EPOCHS, shuffle=True, verbose=0)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    model.save(OUT)
    seed_patient = np.array([[76.0, 120.0, 37.5]], dtype=np.float32)
    print(f"accuracy {history.history['accuracy'][-1]:.3f}, loss {history.history['loss'][-1]:.4f}")
    print(f"seed patient (76 BPM, 120 mm Hg, 37.5 °C): {model.predict(seed_patient, verbose=0)[0].tolist()}")
    print(f"saved {OUT.relative_to(OUT.parents[3])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
