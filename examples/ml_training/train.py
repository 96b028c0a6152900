"""The model and its training: the one file the experiment loop edits.

evaluate.py calls train(x, y, num_classes) once, with x of shape (n, 2) and integer labels
y, and scores the returned function, which must map inputs to class probabilities of shape
(n, num_classes), on held-out data (val_loss, lower is better). train() must finish within
the harness's wall-clock cap (5 s; aim for well under 1 s). Keep it deterministic: draw all
randomness from SEED.
"""

import numpy as np

# Hyperparameters
SEED = 0
HIDDEN = 8  # units in the hidden layer
LEARNING_RATE = 0.05
STEPS = 300  # full-batch gradient descent steps
INIT_SCALE = 0.5  # standard deviation of the initial weights


def softmax(logits):
    logits = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


def train(x, y, num_classes):
    """A one-hidden-layer MLP (tanh) trained with plain gradient descent on cross-entropy."""
    rng = np.random.default_rng(SEED)
    n, d = x.shape
    params = {
        "w1": rng.normal(0, INIT_SCALE, (d, HIDDEN)),
        "b1": np.zeros(HIDDEN),
        "w2": rng.normal(0, INIT_SCALE, (HIDDEN, num_classes)),
        "b2": np.zeros(num_classes),
    }
    onehot = np.eye(num_classes)[y]

    def forward(inputs):
        h = np.tanh(inputs @ params["w1"] + params["b1"])
        return h, softmax(h @ params["w2"] + params["b2"])

    for _ in range(STEPS):
        h, p = forward(x)
        g_logits = (p - onehot) / n
        g_h = (g_logits @ params["w2"].T) * (1 - h**2)
        grads = {
            "w1": x.T @ g_h,
            "b1": g_h.sum(axis=0),
            "w2": h.T @ g_logits,
            "b2": g_logits.sum(axis=0),
        }
        for k in params:
            params[k] -= LEARNING_RATE * grads[k]

    return lambda inputs: forward(inputs)[1]
