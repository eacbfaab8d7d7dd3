"""The table our variable paths <-> NVlabs names (PyTorch state_dict and TF1) and its transforms."""
import numpy as np
import pytest

from histaug_tf.interop import nvlabs_names as N
from histaug_tf.gan.networks import Discriminator, Generator

RNG = np.random.default_rng(5)


def nets():
    G = Generator(z_dim=8, c_dim=2, w_dim=8, img_resolution=16, img_channels=3,
                  mapping_kwargs=dict(num_layers=2),
                  synthesis_kwargs=dict(channel_base=64, channel_max=8))
    D = Discriminator(c_dim=2, img_resolution=16, img_channels=3, channel_base=64, channel_max=8,
                      mapping_kwargs=dict(num_layers=2))
    return G, D


def expected_torch_G_keys():
    """NVlabs Generator.state_dict() keys (minus resample_filter buffers) for res 16, c_dim 2,
    2 mapping layers, written from NVlabs training/networks.py's module structure."""
    keys = ["mapping.w_avg", "mapping.embed.weight", "mapping.embed.bias"]
    keys += [f"mapping.fc{i}.{p}" for i in range(2) for p in ("weight", "bias")]
    keys += ["synthesis.b4.const"]
    for r in (4, 8, 16):
        convs = ["conv1"] if r == 4 else ["conv0", "conv1"]
        for cv in convs:
            keys += [f"synthesis.b{r}.{cv}.{p}" for p in
                     ("weight", "bias", "noise_const", "noise_strength", "affine.weight", "affine.bias")]
        keys += [f"synthesis.b{r}.torgb.{p}" for p in ("weight", "bias", "affine.weight", "affine.bias")]
    return set(keys)


def expected_torch_D_keys():
    keys = ["b16.fromrgb.weight", "b16.fromrgb.bias"]
    for r in (16, 8):
        keys += [f"b{r}.{p}" for p in ("conv0.weight", "conv0.bias", "conv1.weight", "conv1.bias", "skip.weight")]
    keys += ["mapping.embed.weight", "mapping.embed.bias"]
    keys += [f"mapping.fc{i}.{p}" for i in range(2) for p in ("weight", "bias")]
    keys += [f"b4.{m}.{p}" for m in ("conv", "fc", "out") for p in ("weight", "bias")]
    return set(keys)


def test_every_variable_has_one_nvlabs_name():
    G, D = nets()
    for model, expected in ((G, expected_torch_G_keys()), (D, expected_torch_D_keys())):
        table = N.name_table(model, "torch")
        assert len(table) == len(model.variables)
        assert set(name for name, _ in table.values()) == expected
        tf1 = N.name_table(model, "tf1")
        assert len(set(name for name, _ in tf1.values())) == len(model.variables)


def test_torch_layouts():
    G, D = nets()
    exported = N.export_to_nvlabs(G, "torch")
    # PyTorch: conv [out, in, kh, kw], dense [out, in], const [C, 4, 4]
    assert exported["synthesis.b8.conv0.weight"].shape == (8, 8, 3, 3)
    assert exported["synthesis.b16.torgb.weight"].shape == (3, 4, 1, 1)  # 64 // 16 = 4 channels
    assert exported["mapping.fc0.weight"].shape == (8, 16)
    assert exported["mapping.embed.weight"].shape == (8, 2)
    assert exported["synthesis.b4.const"].shape == (8, 4, 4)
    assert exported["synthesis.b4.conv1.noise_strength"].shape == ()
    dx = N.export_to_nvlabs(D, "torch")
    assert dx["b4.fc.weight"].shape == (8, 8 * 16)
    assert dx["b16.fromrgb.weight"].shape == (4, 3, 1, 1)
    # an element lands where the transposes say
    w = G.synthesis.blocks[1].conv0.weight.numpy()  # [kh, kw, in, out]
    assert exported["synthesis.b8.conv0.weight"][5, 2, 0, 1] == w[0, 1, 2, 5]


def test_tf1_names_and_transforms():
    e = N.lookup("synthesis/b64/conv0/weight")
    assert e["tf1"] == "synthesis/64x64/Conv0_up/weight" and e["tf1_transform"] == "tf1_flip"
    assert N.tf1_scoped_name(e["tf1"]) == "G_synthesis/64x64/Conv0_up/weight"
    assert e["torch"] == "synthesis.b64.conv0.weight" and e["torch_transform"] == "conv_t"
    assert N.lookup("synthesis/b64/conv0/noise_const")["tf1"] == "synthesis/noise7"
    assert N.lookup("synthesis/b64/conv1/noise_const")["tf1"] == "synthesis/noise8"
    assert N.lookup("synthesis/b4/conv1/noise_const")["tf1"] == "synthesis/noise0"
    assert N.lookup("synthesis/b4/conv1/weight")["tf1"] == "synthesis/4x4/Conv/weight"
    assert N.lookup("mapping/fc3/weight")["tf1"] == "mapping/Dense3/weight"
    assert N.tf1_scoped_name("mapping/Dense3/weight") == "G_mapping/Dense3/weight"
    assert N.lookup("mapping/w_avg")["tf1"] == "dlatent_avg"
    d = N.lookup("b32/conv1/weight", "discriminator")
    assert (d["torch"], d["tf1"]) == ("b32.conv1.weight", "32x32/Conv1_down/weight")
    assert N.lookup("b4/out/bias", "discriminator")["tf1"] == "Output/bias"
    mb = N.lookup("synthesis/b8/torgb/affine/bias")
    assert mb["tf1"] == "synthesis/8x8/ToRGB/mod_bias"
    np.testing.assert_array_equal(N.to_ours(np.zeros(3), mb["tf1_transform"]), np.ones(3))
    w = RNG.standard_normal([3, 3, 2, 4])
    np.testing.assert_array_equal(N.to_ours(w, "tf1_flip")[0, 0], w[2, 2])
    np.testing.assert_array_equal(N.to_ours(np.arange(32.0).reshape(1, 2, 4, 4), "tf1_const")[1, 2],
                                  [6.0, 22.0])
    with pytest.raises(KeyError):
        N.lookup("synthesis/b8/nonsense")


@pytest.mark.parametrize("flavour", ["torch", "tf1"])
def test_export_then_assign_round_trip(flavour):
    G, D = nets()
    G2, D2 = nets()
    for a, b in ((G, G2), (D, D2)):
        for v in a.variables:
            v.assign(RNG.standard_normal(v.shape).astype(np.float32))
        assigned = N.assign_from_nvlabs(b, N.export_to_nvlabs(a, flavour), flavour)
        assert len(assigned) == len(a.variables)
        for p, v in N.variable_paths(a).items():
            # tf1 mod_bias is stored minus 1: equal up to float32 rounding
            np.testing.assert_allclose(N.variable_paths(b)[p].numpy(), v.numpy(), atol=1e-6, rtol=0)
    with pytest.raises(ValueError):
        N.assign_from_nvlabs(G2, {}, "torch")
    bad = N.export_to_nvlabs(G, "torch")
    bad["mapping.fc0.weight"] = bad["mapping.fc0.weight"][:, :3]
    with pytest.raises(ValueError):
        N.assign_from_nvlabs(G2, bad, "torch")
