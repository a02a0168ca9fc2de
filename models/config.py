"""The two model profiles: `rt` (CPU real time, the embedded default) and `hq` (the paper's size)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


class UnknownProfileError(KeyError):
    """A profile name that is not one of PROFILES."""

    def __str__(self) -> str:
        return f"unknown model profile {self.args[0]!r}; choose one of: {', '.join(PROFILES)}"


@dataclass(frozen=True)
class ProfileConfig:
    """Sizes of every StyleSync network of one profile.

    The face crop is a square of `face_size` pixels. The generator makes the bottom `region_rows` rows
    of it (all rows in `hq`; the lower half in `rt`, where the mouth, cheeks and jaw are), the upper rows
    coming straight from the template. Per-level tuples run from the lowest resolution to the highest;
    the generator has two style-conv layers per level, so L = 2 * levels.
    """

    name: str
    face_size: int  # side of the aligned square face crop, pixels
    region_rows: int  # rows at the bottom of the crop that the generator outputs
    base_width: int  # width of the generator's first level (its height: base_width * region / face)
    channels: tuple[int, ...]  # generator (and discriminator) channels per level
    noise_channels: tuple[int, ...]  # channels of each cached face-encoder map per level
    encoder_channels: tuple[int, ...]  # face-encoder channels per level
    audio_channels: tuple[int, ...]  # audio-encoder channels of its five stages
    audio_dim: int  # f_a
    face_dim: int  # f_f
    w_dim: int  # style vector w
    mapping_layers: int  # fully connected layers of the mapping network
    delta_w_hidden: int  # hidden width of the personalisation head MLP_dw

    def __post_init__(self) -> None:
        levels = len(self.channels)
        if not (len(self.noise_channels) == len(self.encoder_channels) == levels):
            raise ValueError("channels, noise_channels and encoder_channels need one entry per level")
        if self.base_width * 2 ** (levels - 1) != self.face_size:
            raise ValueError(f"base_width * 2^(levels-1) must equal face_size ({self.face_size})")
        if (self.region_rows * self.base_width) % self.face_size or self.region_rows > self.face_size:
            raise ValueError("region_rows must be a multiple of face_size / base_width, at most face_size")

    @property
    def levels(self) -> int:
        return len(self.channels)

    @property
    def num_layers(self) -> int:
        """L: style-conv layers, one style each (the size of W+)."""
        return 2 * self.levels

    @property
    def masked_from_layer(self) -> int:
        """First 0-based layer whose face map is masked (Eq. 1: l > floor(L/2), 1-based)."""
        return self.num_layers // 2

    def level_width(self, level: int) -> int:
        """Width of the face (and of the generated region) at a level."""
        return self.base_width * 2**level

    def level_rows(self, level: int) -> int:
        """Rows of the generated region at a level."""
        return self.region_rows * self.level_width(level) // self.face_size

    def layer_level(self, layer: int) -> int:
        return layer // 2

    @property
    def output_shape(self) -> tuple[int, int]:
        """(rows, width) of the generated region."""
        return self.region_rows, self.face_size

    def face_map_shapes(self) -> list[tuple[int, int, int]]:
        """(channels, rows, width) of the L cached face maps, in layer order."""
        return [
            (self.noise_channels[lv], self.level_rows(lv), self.level_width(lv))
            for lv in (self.layer_level(layer) for layer in range(self.num_layers))
        ]

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, ProfileConfig] = {
    # CPU real time: a 128-px face crop, generating its lower half (64x128) from a 4x8 start.
    "rt": ProfileConfig(
        name="rt",
        face_size=128,
        region_rows=64,
        base_width=8,
        channels=(256, 256, 128, 64, 32),
        noise_channels=(32, 32, 16, 8, 8),
        encoder_channels=(256, 128, 64, 32, 16),
        audio_channels=(32, 64, 128, 256, 256),
        audio_dim=128,
        face_dim=128,
        w_dim=256,
        mapping_layers=4,
        delta_w_hidden=256,
    ),
    # The paper's size: 256x256 faces, StyleGAN2 channel widths, L = 14 style-conv layers.
    "hq": ProfileConfig(
        name="hq",
        face_size=256,
        region_rows=256,
        base_width=4,
        channels=(512, 512, 512, 512, 512, 256, 128),
        noise_channels=(64, 64, 64, 32, 32, 16, 8),
        encoder_channels=(512, 512, 512, 256, 128, 64, 32),
        audio_channels=(64, 128, 256, 512, 512),
        audio_dim=256,
        face_dim=256,
        w_dim=512,
        mapping_layers=8,
        delta_w_hidden=512,
    ),
}


def get_profile(name: str) -> ProfileConfig:
    try:
        return PROFILES[name]
    except KeyError:
        raise UnknownProfileError(name) from None
