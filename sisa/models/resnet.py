"""ResNet-18 (He et al., 2016) for CIFAR-sized images, with GroupNorm instead of BatchNorm.

CIFAR-style: a 3x3 stem without max-pool, four stages of BasicBlocks at widths
`width` x (1, 2, 4, 8) (the first at stride 1, the others at stride 2), global average pool,
dense head. At width 64 on 32x32x3 inputs with 10 classes: 11,173,962 parameters.

Why GroupNorm: sisa's training step masks padded rows out of the loss and carries only
(params, opt_state, step). That is exact only if each row's logits depend on that row alone.
BatchNorm breaks this twice: its batch statistics mix the rows of a batch (the rows padding a
batch, examples of later slices or zeros, would move the real rows' outputs, so a stage would
depend on data its lineage says it never saw; a served prediction would depend on its
batch-mates), and its running averages are mutable state outside `nnx.Param` that the step
neither carries nor checkpoints. GroupNorm normalises each example over its own channels and
positions: no coupling between rows, no state but parameters.
"""

import math

import jax
from flax import nnx

from sisa.models.cnn import image_shape
from sisa.models.layers import dropout


def _conv(cin, cout, kernel, stride, rngs):
    pad = kernel // 2  # as PyTorch's ResNet: 32 -> 16 at stride 2, symmetric padding
    return nnx.Conv(cin, cout, kernel_size=(kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                    use_bias=False, rngs=rngs)  # a norm follows, whose bias makes a conv bias redundant


def _norm(channels, groups, rngs):
    """GroupNorm with the largest group count dividing `channels` that is at most `groups`."""
    return nnx.GroupNorm(channels, num_groups=math.gcd(groups, channels), rngs=rngs)


class BasicBlock(nnx.Module):
    """relu(norm(conv3x3(relu(norm(conv3x3(x))))) + shortcut(x)); the shortcut is a 1x1 conv and a
    norm where the shape changes, else the identity."""

    def __init__(self, cin, cout, stride, groups, *, rngs: nnx.Rngs):
        self.conv1, self.norm1 = _conv(cin, cout, 3, stride, rngs), _norm(cout, groups, rngs)
        self.conv2, self.norm2 = _conv(cout, cout, 3, 1, rngs), _norm(cout, groups, rngs)
        widens = stride != 1 or cin != cout
        self.project = nnx.Sequential(_conv(cin, cout, 1, stride, rngs), _norm(cout, groups, rngs)) if widens else None

    def __call__(self, x):
        h = jax.nn.relu(self.norm1(self.conv1(x)))
        h = self.norm2(self.conv2(h))
        return jax.nn.relu(h + (x if self.project is None else self.project(x)))


class ResNet18(nnx.Module):
    """ResNet-18 over image inputs (H, W, C), or flat square ones as `sisa.models.cnn` takes them.

    `width`: channels of the first stage (64 is the paper's); `groups`: GroupNorm groups, at most;
    `blocks`: BasicBlocks per stage, (2, 2, 2, 2) being ResNet-18; `dropout`: before the head.
    `hidden` (given to every built-in model from model.hidden) is ignored: `width` sets the widths.
    """

    def __init__(self, input_shape, num_classes, *, rngs: nnx.Rngs, width=64, groups=32, blocks=(2, 2, 2, 2),
                 dropout=0.0, hidden=None):
        del hidden
        blocks = tuple(blocks)
        if not blocks or not all(isinstance(b, int) and b >= 1 for b in blocks):
            raise ValueError(f"resnet18 needs at least one stage of at least one block, got blocks={blocks}")
        if not (isinstance(width, int) and width >= 1 and isinstance(groups, int) and groups >= 1):
            raise ValueError(f"resnet18 needs integers width >= 1 and groups >= 1, got width={width}, groups={groups}")
        self.shape = image_shape(input_shape)
        self.stem = _conv(self.shape[-1], width, 3, 1, rngs)
        self.stem_norm = _norm(width, groups, rngs)
        layers, cin = [], width
        for stage, count in enumerate(blocks):
            cout = width * 2**stage
            for i in range(count):
                layers.append(BasicBlock(cin, cout, 2 if stage and not i else 1, groups, rngs=rngs))
                cin = cout
        self.blocks = nnx.List(layers)
        self.head = nnx.Linear(cin, num_classes, rngs=rngs)
        self.rate = dropout

    def __call__(self, x, *, key=None):
        x = x.reshape(x.shape[0], *self.shape)
        x = jax.nn.relu(self.stem_norm(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(dropout(x.mean(axis=(1, 2)), self.rate, key, 0))
