"""Profiles (schema, facts), the nvpmodel.conf parser, the merged mode table, and the config sub-models."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from edged.config.yamlsrc import ConfigError
from edged.models.manifest import BatchingSpec
from edged.power.conf import ConfError, parse_conf
from edged.power.config import PowerConfig, TelemetryConfig, load_power_sections
from edged.power.profiles import FALLBACK_BATCHING, load_profile, load_profiles, select_profile
from edged.power.table import UnknownMode, budget_from_name, build_table, effective_batching

PROFILE_DIR = Path(__file__).resolve().parents[2] / "power_profiles"
EXPECTED_FILES = {
    "jetson-nano-p3448",
    "jetson-agx-xavier-p2888",
    "jetson-xavier-nx-p3668",
    "jetson-agx-orin-devkit-32gb-p3701-0000",
    "jetson-agx-orin-64gb-p3701-0005",
    "jetson-agx-orin-32gb-p3701-0004",
    "jetson-agx-orin-industrial-p3701-0008",
    "jetson-agx-xavier-industrial-p2888-0008",
    "jetson-orin-nx-16gb-p3767-0000",
    "jetson-orin-nx-16gb-p3767-0000-super",
    "jetson-orin-nx-8gb-p3767-0001",
    "jetson-orin-nx-8gb-p3767-0001-super",
    "jetson-orin-nano-8gb-p3767-0003",
    "jetson-orin-nano-8gb-p3767-0003-super",
    "jetson-orin-nano-4gb-p3767-0004",
}


def test_every_module_has_a_valid_profile_with_aliases(profiles):
    assert set(profiles) == EXPECTED_FILES
    for profile in profiles.values():
        assert set(profile.aliases) == {"max", "balanced", "eco"}
        assert all(m.batching.max_batch_size >= 1 for m in profile.modes.values())


@pytest.mark.parametrize(
    "module, mode_id, name, cpus, cpu, gpu, mask",
    [
        ("jetson-nano-p3448", 1, "5W", 2, 918, 640, None),
        ("jetson-agx-xavier-p2888", 7, "MODE_15W_DESKTOP", 4, 2188.8, 670, 0),
        ("jetson-agx-xavier-p2888", 1, "MODE_10W", 2, 1200, 520, 5),
        ("jetson-xavier-nx-p3668", 5, "MODE_10W_DESKTOP", 4, 1907.2, 510, 1),
        ("jetson-agx-orin-devkit-32gb-p3701-0000", 2, "MODE_30W", 8, 1728, 612, 240),
        ("jetson-agx-orin-64gb-p3701-0005", 1, "MODE_15W", 4, 1113.6, 408, 248),
        ("jetson-agx-orin-32gb-p3701-0004", 3, "MODE_40W", 8, 1497.6, 816, 128),
        ("jetson-orin-nx-16gb-p3767-0000-super", 4, "40W", 8, 1497.6, 1173, 240),
        ("jetson-orin-nx-8gb-p3767-0001-super", 4, "40W", 6, 1984, 1173, 240),
        ("jetson-orin-nano-8gb-p3767-0003", 1, "7W", 4, 960, 408, 252),
        ("jetson-orin-nano-4gb-p3767-0004", 1, "7W_AI", 4, 806.4, 408, 252),
    ],
)
def test_profile_facts_match_the_reference(module, mode_id, name, cpus, cpu, gpu, mask, profiles):
    mode = profiles[module].modes[mode_id]
    assert (mode.name, mode.cpus_online, mode.cpu_max_mhz, mode.gpu_max_mhz, mode.tpc_pg_mask) == (
        name,
        cpus,
        cpu,
        gpu,
        mask,
    )


def test_defaults_and_reboot_prediction_from_profile_facts(profiles):
    assert profiles["jetson-xavier-nx-p3668"].default_mode == 5
    assert profiles["jetson-orin-nx-16gb-p3767-0000-super"].default_mode == 4
    xavier = profiles["jetson-agx-xavier-p2888"]
    assert xavier.reboot(0, 1).needed is True and xavier.reboot(2, 3).needed is None  # FBP masks not stated
    assert profiles["jetson-nano-p3448"].reboot(0, 1).needed is None  # the facts state no mask
    orin = profiles["jetson-orin-nano-4gb-p3767-0004"]
    assert orin.reboot(0, 1).needed is True and orin.reboot(1, 2).needed is None  # Orin: CPU count / unknown
    assert xavier.is_unverified("default_mode") and xavier.is_unverified("modes.4.tpc_pg_mask")
    assert profiles["jetson-agx-orin-industrial-p3701-0008"].is_unverified("modes.2.name")


def test_p3701_0000_is_the_32gb_developer_kit_module(profiles):
    devkit = profiles["jetson-agx-orin-devkit-32gb-p3701-0000"]
    assert "32GB" in devkit.title and "64" not in devkit.title and devkit.cpus_total == 12
    assert not any("64gb" in m and "p3701-0000" in m for m in profiles)
    assert profiles["jetson-agx-orin-64gb-p3701-0005"].match.compatible == ("p3701-0005",)


@pytest.mark.parametrize(
    "parts, conf, module",
    [
        (("p3737-0000", "p3701-0000"), "nvpmodel_p3701_0000.conf", "jetson-agx-orin-devkit-32gb-p3701-0000"),
        (("p3737-0000", "p3701-0005"), "nvpmodel_p3701_0000.conf", "jetson-agx-orin-64gb-p3701-0005"),
        (("p3737-0000", "p3701-0008"), "nvpmodel_p3701_0008.conf", "jetson-agx-orin-industrial-p3701-0008"),
        (("p2822-0000", "p2888-0008"), "nvpmodel_t194_agxi.conf", "jetson-agx-xavier-industrial-p2888-0008"),
        (("p2822-0000", "p2888-0008"), None, "jetson-agx-xavier-industrial-p2888-0008"),  # most specific part wins
        (("p2822-0000", "p2888-0004"), None, "jetson-agx-xavier-p2888"),
    ],
)
def test_modules_are_told_apart(profiles, parts, conf, module):
    assert select_profile(profiles, parts, conf, None)[0].module == module


def test_xavier_nx_20w_modes_are_optional_and_max_falls_back(profiles, make_conf):
    """Older JetPack 4 confs list modes 0-5 only: no divergence warning, and "max" becomes mode 2."""
    profile = profiles["jetson-xavier-nx-p3668"]
    old = make_conf(profile).split("< POWER_MODEL ID=6")[0] + "< PM_CONFIG DEFAULT=5 >\n"
    table = build_table(profile, parse_conf(old, "old.conf"))
    assert table.warnings == [] and sorted(table.modes) == [0, 1, 2, 3, 4, 5]
    assert table.resolve("max").id == 2
    assert build_table(profile, parse_conf(make_conf(profile), "new.conf")).resolve("max").id == 8


def test_orin_nano_7w_modes_keep_four_cpus(profiles):
    for module in ("jetson-orin-nano-8gb-p3767-0003", "jetson-orin-nano-8gb-p3767-0003-super"):
        seven = next(m for m in profiles[module].modes.values() if m.name == "7W")
        assert seven.cpus_online == 4


def _copy_profile(tmp_path: Path, module: str, edit) -> Path:
    path = tmp_path / f"{module}.yaml"
    path.write_text(edit((PROFILE_DIR / f"{module}.yaml").read_text()))
    return path


def test_schema_errors_name_file_line_and_key(tmp_path):
    path = _copy_profile(
        tmp_path,
        "jetson-nano-p3448",
        lambda t: t.replace("    emc_max_mhz: 1600\n", "    emc_max_mhz: 1600\n    emc_min: 3\n"),
    )
    with pytest.raises(ConfigError) as exc:
        load_profile(path)
    line = path.read_text().splitlines().index("    emc_min: 3") + 1
    assert f"{path}:{line}: modes[1].emc_min: unknown key" in str(exc.value)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda t: t.replace("default_mode: 0", "default_mode: 9"), "default_mode 9 is not a mode ID"),
        (lambda t: t.replace("eco: 1}", "eco: 7}"), "alias eco -> 7"),
        (lambda t: t.replace("unverified: [match.nvpmodel_conf]", "unverified: [modes.3.name]"), "names no field"),
        (lambda t: t.replace("    cpus_online: 2\n", "    cpus_online: 9\n"), "cpus_online 9 > cpus_total 4"),
        (lambda t: t.replace("module: jetson-nano-p3448", "module: jetson-nano-other"), "must match the file name"),
    ],
)
def test_schema_rejects_inconsistent_profiles(tmp_path, edit, message):
    with pytest.raises(ConfigError, match=message):
        load_profile(_copy_profile(tmp_path, "jetson-nano-p3448", edit))


def test_load_profiles_reports_every_broken_file(tmp_path):
    shutil.copy(PROFILE_DIR / "jetson-nano-p3448.yaml", tmp_path)
    (tmp_path / "a.yaml").write_text("schema: edged.power-profile/v1\nmodule: a\n")
    (tmp_path / "b.yaml").write_text("modes: [\n")
    with pytest.raises(ConfigError) as exc:
        load_profiles(tmp_path)
    assert any("a.yaml" in p for p in exc.value.problems) and any(
        "b.yaml:" in p and "YAML syntax" in p for p in exc.value.problems
    )


REAL_STYLE_CONF = """\
# comment line
< PARAM TYPE=FILE NAME=CPU_ONLINE >
CORE_0 /sys/devices/system/cpu/cpu0/online
CORE_1 /sys/devices/system/cpu/cpu1/online
< PARAM TYPE=CLOCK NAME=EMC >
MAX_FREQ /sys/kernel/nvpmodel_emc_cap/emc_iso_cap

< POWER_MODEL ID=0 NAME=MAXN >
CPU_ONLINE CORE_0 1
CPU_ONLINE CORE_1 1
CPU_A78_0 MIN_FREQ 729600
CPU_A78_0 MAX_FREQ -1
GPU_POWER_CONTROL_ENABLE GPU_PWR_CNTL_EN on
GPU MAX_FREQ -1
EMC MAX_FREQ 0
TPC_POWER_GATING TPC_PG_MASK 0
FBP_POWER_GATING FBP_PG_MASK 0
< POWER_MODEL ID=5 NAME=MODE_15W >   # IDs need not be contiguous
CPU_ONLINE CORE_0 1
CPU_ONLINE CORE_1 0
CPU_A78_0 MAX_FREQ 1113600
GPU MAX_FREQ 408000000
EMC MAX_FREQ 2133000000
TPC_POWER_GATING TPC_PG_MASK 248
ODD_LINE
< PM_CONFIG DEFAULT=5 >
< FAN_CONFIG DEFAULT=cool >
"""


def test_conf_parser_reads_modes_by_real_id():
    conf = parse_conf(REAL_STYLE_CONF, "x.conf")
    assert sorted(conf.modes) == [0, 5] and conf.default_mode == 5 and conf.fan_default == "cool"
    maxn, m15 = conf.modes[0], conf.modes[5]
    assert (maxn.cpu_max_mhz, maxn.gpu_max_mhz, maxn.emc_max_mhz, maxn.fbp_pg_mask) == (
        "uncapped",
        "uncapped",
        "uncapped",
        0,
    )
    assert (m15.cpus_online, m15.cpus_total, m15.cpu_max_mhz, m15.gpu_max_mhz, m15.emc_max_mhz, m15.tpc_pg_mask) == (
        1,
        2,
        1113.6,
        408.0,
        2133.0,
        248,
    )
    assert conf.params["EMC"] == "CLOCK"
    assert conf.warnings and "x.conf:" in conf.warnings[0] and "ODD_LINE" in conf.warnings[0]


@pytest.mark.parametrize(
    "text, message",
    [
        ("< POWER_MODEL ID=0 NAME=A >\nGPU MAX_FREQ 1\n", "PM_CONFIG DEFAULT=n > is missing"),
        (
            "< POWER_MODEL ID=0 NAME=A >\n< POWER_MODEL ID=0 NAME=B >\n< PM_CONFIG DEFAULT=0 >\n",
            "x.conf:2: duplicate POWER_MODEL ID=0",
        ),
        ("< POWER_MODEL ID=0 NAME=A >\n< PM_CONFIG DEFAULT=3 >\n", "DEFAULT=3 is not a POWER_MODEL ID"),
        ("CPU_ONLINE CORE_0 1\n", "x.conf:1: line outside any"),
        ("< POWER_MODEL ID=0 NAME=A\n", "x.conf:1: malformed block header"),
        ("< POWER_MODEL ID=0 NAME=A >\nGPU MAX_FREQ fast\n< PM_CONFIG DEFAULT=0 >\n", "x.conf:2: frequency 'fast'"),
    ],
)
def test_conf_parser_rejects_what_it_cannot_trust(text, message):
    with pytest.raises(ConfError, match=message):
        parse_conf(text, "x.conf")


@pytest.mark.parametrize("module", sorted(EXPECTED_FILES))
def test_generated_conf_agrees_with_its_profile(module, profiles, make_conf):
    profile = profiles[module]
    table = build_table(profile, parse_conf(make_conf(profile), "gen.conf"))
    assert table.warnings == []
    assert sorted(table.modes) == sorted(profile.modes) and table.default_mode == profile.default_mode
    assert {table.resolve(a).id for a in ("max", "balanced", "eco")} == {profile.alias_targets(a)[0] for a in profile.aliases}


def test_live_conf_wins_and_divergences_are_warned(profiles, make_conf):
    profile = profiles["jetson-agx-orin-devkit-32gb-p3701-0000"]
    text = make_conf(profile).replace("GPU MAX_FREQ 612000000", "GPU MAX_FREQ 624750000")
    text = text.replace("NAME=MODE_15W", "NAME=MODE_15W_NEW").replace(
        "< PM_CONFIG DEFAULT=2 >", "< PM_CONFIG DEFAULT=3 >"
    )
    text = text.replace("< PM_CONFIG", "< POWER_MODEL ID=9 NAME=MODE_25W >\nGPU MAX_FREQ 500000000\n< PM_CONFIG")
    table = build_table(profile, parse_conf(text, "live.conf"))
    joined = "\n".join(table.warnings)
    assert (
        table.modes[2].gpu_max_mhz == 624.75
        and "gpu_max_mhz is 612.0 in the profile, 624.75 in the live conf" in joined
    )
    assert table.modes[1].name == "MODE_15W_NEW" and table.modes[1].batching == FALLBACK_BATCHING
    assert "alias eco -> 1 MODE_15W dropped" in joined and "eco" not in table.aliases
    assert (
        table.modes[9].budget_w == 25
        and table.modes[9].origin == "conf"
        and "mode 9 MODE_25W is not in profile" in joined
    )
    assert table.default_mode == 3 and "default mode is 2 in the profile, 3 in the live conf" in joined


def test_reboot_rule_uses_live_masks_and_missing_modes_are_not_offered(profiles, make_conf):
    profile = profiles["jetson-xavier-nx-p3668"]
    text = make_conf(profile).replace("ID=1 NAME=MODE_15W_4CORE >\n", "ID=1 NAME=MODE_15W_4CORE >\nFBP_POWER_GATING FBP_PG_MASK 1\n")
    table = build_table(profile, parse_conf(text, "live.conf"), "t194")
    assert table.reboot(0, 1).needed is True and "FBP_PG_MASK none -> 1" in table.reboot(0, 1).why
    assert table.reboot(0, 2).needed is False  # live conf: no FBP line on either side means no gating
    profile = profiles["jetson-orin-nx-16gb-p3767-0000"]
    text = make_conf(profile).replace("TPC_PG_MASK 252", "TPC_PG_MASK 240")
    text = text.split("< POWER_MODEL ID=3")[0] + "< PM_CONFIG DEFAULT=2 >\n"
    table = build_table(profile, parse_conf(text, "live.conf"), "t234")
    assert table.reboot(0, 1).needed is True  # the masks agree now, but Orin: 8 -> 4 CPUs
    assert table.reboot(1, 2).needed is None  # same masks and CPUs: nvpmodel decides
    assert 3 not in table.modes and any(
        "mode 3 25W is in the profile but not in the live conf" in w for w in table.warnings
    )
    optional = profiles["jetson-orin-nano-8gb-p3767-0003-super"]
    no7w = make_conf(optional).split("< POWER_MODEL ID=3")[0] + "< PM_CONFIG DEFAULT=1 >\n"
    assert build_table(optional, parse_conf(no7w, "c")).warnings == []  # optional mode: absence is not a divergence


def test_resolve_accepts_id_name_alias_and_lists_choices(profiles, make_conf):
    profile = profiles["jetson-xavier-nx-p3668"]
    table = build_table(profile, parse_conf(make_conf(profile), "c"))
    assert table.resolve("8").name == "MODE_20W_6CORE"
    assert table.resolve("mode_10w_desktop").id == 5
    assert table.resolve("ECO").id == 4
    with pytest.raises(UnknownMode, match=r"choose an ID \(0, 1, .*alias \(balanced, eco, max\)"):
        table.resolve("turbo")
    with pytest.raises(UnknownMode):
        table.resolve("42")


def test_select_profile_picks_super_by_conf_name_or_by_conf_modes(profiles):
    parts = ("p3768-0000", "p3767-0000")
    std, _ = select_profile(profiles, parts, "nvpmodel_p3767_0000.conf", None)
    sup, _ = select_profile(profiles, parts, "nvpmodel_p3767_0000_super.conf", None)
    assert (std.module, sup.module) == ("jetson-orin-nx-16gb-p3767-0000", "jetson-orin-nx-16gb-p3767-0000-super")
    by_modes, how = select_profile(
        profiles, parts, "renamed.conf", {0: "MAXN_SUPER", 1: "10W", 2: "15W", 3: "25W", 4: "40W"}
    )
    assert by_modes.variant == "super" and "conf modes" in how
    nano, _ = select_profile(profiles, ("p3449-0000-b00", "p3448-0002-b00"), None, None)
    assert nano.module == "jetson-nano-p3448"
    nothing, why = select_profile(profiles, ("p9999-0000",), None, None)
    assert nothing is None and "p9999-0000" in why


def test_budget_from_name_and_effective_batching(profiles):
    assert [budget_from_name(n) for n in ("MODE_15W", "7W_AI", "MAXN", "MODE_30W_ALL", "MAXN_SUPER")] == [
        15,
        7,
        None,
        30,
        None,
    ]
    model = BatchingSpec(max_batch_size=8, max_queue_delay_ms=20, max_queue_size=64)
    eco = profiles["jetson-orin-nano-4gb-p3767-0004"].modes[1].batching
    tuned = effective_batching(model, eco)
    assert (tuned.max_batch_size, tuned.max_queue_delay_ms, tuned.max_queue_size) == (2, 50, 64)
    big = profiles["jetson-agx-orin-devkit-32gb-p3701-0000"].modes[0].batching
    assert effective_batching(model, big).max_batch_size == 8  # the mode never raises the model's own limit


def test_config_defaults_and_errors(tmp_path):
    assert (
        PowerConfig().control_socket == Path("/run/edged/control.sock")
        and TelemetryConfig().prometheus.enabled is False
    )
    assert load_power_sections(None) == (PowerConfig(), TelemetryConfig())
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(
        "dicom:\n  port: 104\npower:\n  nvpmodel: /opt/nvpmodel\n"
        "telemetry:\n  interval_s: 5\n  prometheus:\n    port: 9999\n"
    )
    power, telemetry = load_power_sections(cfg)
    assert power.nvpmodel == "/opt/nvpmodel" and telemetry.interval_s == 5 and telemetry.prometheus.port == 9999
    cfg.write_text("power:\n  nvpmodl: x\ntelemetry:\n  prometheus:\n    port: 80\n")
    with pytest.raises(ConfigError) as exc:
        load_power_sections(cfg)
    assert f"{cfg}:2: power.nvpmodl: unknown key (did you mean nvpmodel?)" in exc.value.problems
    assert any(p.startswith(f"{cfg}:5: telemetry.prometheus.port:") for p in exc.value.problems)
