"""`train` refuses models with image conditioning (the teachers sample text-to-video) in one line."""

from __future__ import annotations

from tests.wan_variants import I2V_CONFIG, transformer


def test_image_to_video_wan_is_refused_in_one_line(tmp_path, cli):
    transformer(I2V_CONFIG).save_pretrained(tmp_path / "i2v")
    (tmp_path / "prompts.txt").write_text("a red fox\n")
    cli.refuses("train", "wan", "--model", str(tmp_path / "i2v"), "--prompts", str(tmp_path / "prompts.txt"),
                "--out", str(tmp_path / "out"), "--steps", "1", "--teacher-steps", "2", "--frames", "5",
                "--height", "96", "--width", "160", "--text-len", "8",
                naming=("condition_latent", "Wan I2V", "not supported yet"))
    assert not (tmp_path / "out" / "adapters.safetensors").exists()
