"""Common IPSO Smart Objects as built-in definitions (object ids 3200-3348).

IPSO objects are assembled from reusable resources (5500 Digital Input State, 5700 Sensor Value,
5750 Application Type, ...) which keep their id, name and type in every object that uses them; the
rows below are those shared resources, and each object lists which of them it has. Version 1.1 of
the sensor objects added the timestamp and measurement-quality resources; Location 2.0 (3336) has
numeric coordinates. Checked against the OMA registry's files for each version.
See ``table.py`` for the row notation.
"""

from __future__ import annotations

from gateway.lwm2m.model.table import (
    BOOL,
    FLOAT,
    INT,
    MAND,
    NONE,
    ONE,
    OPAQUE,
    OPT,
    RW,
    STR,
    TIME,
    E,
    R,
    Row,
    define,
    revise,
)
from gateway.lwm2m.model.types import ObjectModel


def _mandatory(row: Row) -> Row:
    rid, name, ops, multiple, _, rtype, value_range, units = row
    return (rid, name, ops, multiple, MAND, rtype, value_range, units)


# The reusable resources, all optional here; an object makes its key resource mandatory.
# id      name                                  ops inst req  type    range     units
DIGITAL_INPUT_STATE: Row = (5500, "Digital Input State", R, ONE, OPT, BOOL, "", "")
DIGITAL_INPUT_COUNTER: Row = (5501, "Digital Input Counter", R, ONE, OPT, INT, "", "")
DIGITAL_INPUT_POLARITY: Row = (5502, "Digital Input Polarity", RW, ONE, OPT, BOOL, "", "")
DIGITAL_INPUT_DEBOUNCE: Row = (5503, "Digital Input Debounce", RW, ONE, OPT, INT, "", "ms")
DIGITAL_INPUT_EDGE_SELECTION: Row = (5504, "Digital Input Edge Selection", RW, ONE, OPT, INT, "1..3", "")
DIGITAL_INPUT_COUNTER_RESET: Row = (5505, "Digital Input Counter Reset", E, ONE, OPT, NONE, "", "")
LATITUDE: Row = (5514, "Latitude", R, ONE, OPT, STR, "", "")
LONGITUDE: Row = (5515, "Longitude", R, ONE, OPT, STR, "", "")
UNCERTAINTY: Row = (5516, "Uncertainty", R, ONE, OPT, STR, "", "")
VELOCITY: Row = (5517, "Velocity", R, ONE, OPT, OPAQUE, "", "")
TIMESTAMP: Row = (5518, "Timestamp", R, ONE, OPT, TIME, "", "")
DELAY_DURATION: Row = (5521, "Delay Duration", RW, ONE, OPT, FLOAT, "", "s")
TRIGGER: Row = (5523, "Trigger", E, ONE, OPT, NONE, "", "")
MINIMUM_OFF_TIME: Row = (5525, "Minimum Off-time", RW, ONE, OPT, FLOAT, "", "s")
TIMER_MODE: Row = (5526, "Timer Mode", RW, ONE, OPT, INT, "0..4", "")
TEXT: Row = (5527, "Text", RW, ONE, OPT, STR, "", "")
X_COORDINATE: Row = (5528, "X Coordinate", RW, ONE, OPT, INT, "", "")
Y_COORDINATE: Row = (5529, "Y Coordinate", RW, ONE, OPT, INT, "", "")
CLEAR_DISPLAY: Row = (5530, "Clear Display", E, ONE, OPT, NONE, "", "")
CONTRAST: Row = (5531, "Contrast", RW, ONE, OPT, FLOAT, "0..100", "%")
COUNTER: Row = (5534, "Counter", RW, ONE, OPT, INT, "", "")
REMAINING_TIME: Row = (5538, "Remaining Time", R, ONE, OPT, FLOAT, "", "s")
DIGITAL_STATE: Row = (5543, "Digital State", R, ONE, OPT, BOOL, "", "")
CUMULATIVE_TIME: Row = (5544, "Cumulative Time", RW, ONE, OPT, FLOAT, "", "s")
MAX_X_COORDINATE: Row = (5545, "Max X Coordinate", R, ONE, OPT, INT, "", "")
MAX_Y_COORDINATE: Row = (5546, "Max Y Coordinate", R, ONE, OPT, INT, "", "")
MULTI_STATE_INPUT: Row = (5547, "Multi-state Input", R, ONE, OPT, INT, "", "")
LEVEL: Row = (5548, "Level", RW, ONE, OPT, FLOAT, "0..100", "%")
DIGITAL_OUTPUT_STATE: Row = (5550, "Digital Output State", RW, ONE, OPT, BOOL, "", "")
DIGITAL_OUTPUT_POLARITY: Row = (5551, "Digital Output Polarity", RW, ONE, OPT, BOOL, "", "")
ANALOG_INPUT_CURRENT_VALUE: Row = (5600, "Analog Input Current Value", R, ONE, OPT, FLOAT, "", "")
MIN_MEASURED_VALUE: Row = (5601, "Min Measured Value", R, ONE, OPT, FLOAT, "", "")
MAX_MEASURED_VALUE: Row = (5602, "Max Measured Value", R, ONE, OPT, FLOAT, "", "")
MIN_RANGE_VALUE: Row = (5603, "Min Range Value", R, ONE, OPT, FLOAT, "", "")
MAX_RANGE_VALUE: Row = (5604, "Max Range Value", R, ONE, OPT, FLOAT, "", "")
RESET_MIN_MAX: Row = (5605, "Reset Min and Max Measured Values", E, ONE, OPT, NONE, "", "")
ANALOG_OUTPUT_CURRENT_VALUE: Row = (5650, "Analog Output Current Value", RW, ONE, OPT, FLOAT, "", "")
SENSOR_VALUE: Row = (5700, "Sensor Value", R, ONE, OPT, FLOAT, "", "")
SENSOR_UNITS: Row = (5701, "Sensor Units", R, ONE, OPT, STR, "", "")
COMPASS_DIRECTION: Row = (5705, "Compass Direction", R, ONE, OPT, FLOAT, "0..360", "deg")
COLOUR: Row = (5706, "Colour", RW, ONE, OPT, STR, "", "")
APPLICATION_TYPE: Row = (5750, "Application Type", RW, ONE, OPT, STR, "", "")
SENSOR_TYPE: Row = (5751, "Sensor Type", R, ONE, OPT, STR, "", "")
CUMULATIVE_ACTIVE_POWER: Row = (5805, "Cumulative active power", R, ONE, OPT, FLOAT, "", "Wh")
POWER_FACTOR: Row = (5820, "Power factor", R, ONE, OPT, FLOAT, "", "")
CURRENT_CALIBRATION: Row = (5821, "Current Calibration", RW, ONE, OPT, FLOAT, "", "")
RESET_CUMULATIVE_ENERGY: Row = (5822, "Reset Cumulative energy", E, ONE, OPT, NONE, "", "")
ON_OFF: Row = (5850, "On/Off", RW, ONE, OPT, BOOL, "", "")
DIMMER: Row = (5851, "Dimmer", RW, ONE, OPT, INT, "0..100", "%")
ON_TIME: Row = (5852, "On time", RW, ONE, OPT, INT, "", "s")
OFF_TIME: Row = (5854, "Off Time", RW, ONE, OPT, INT, "", "s")
MEASUREMENT_QUALITY_INDICATOR: Row = (6042, "Measurement Quality Indicator", R, ONE, OPT, INT, "0..23", "")
MEASUREMENT_QUALITY_LEVEL: Row = (6049, "Measurement Quality Level", R, ONE, OPT, INT, "0..100", "")
FRACTIONAL_TIMESTAMP: Row = (6050, "Fractional Timestamp", R, ONE, OPT, FLOAT, "0..1", "s")
NUMERIC_LATITUDE: Row = (6051, "Numeric Latitude", R, ONE, OPT, FLOAT, "", "lat")
NUMERIC_LONGITUDE: Row = (6052, "Numeric Longitude", R, ONE, OPT, FLOAT, "", "lon")
NUMERIC_UNCERTAINTY: Row = (6053, "Numeric Uncertainty", R, ONE, OPT, FLOAT, "", "m")

# What version 1.1 added to the measuring objects.
_TIMESTAMPS = [TIMESTAMP, FRACTIONAL_TIMESTAMP]
_QUALITY = [MEASUREMENT_QUALITY_INDICATOR, MEASUREMENT_QUALITY_LEVEL]


# The resources every IPSO measuring object has: value, units, min/max and their reset.
_SENSOR = [
    _mandatory(SENSOR_VALUE), SENSOR_UNITS, MIN_MEASURED_VALUE, MAX_MEASURED_VALUE, MIN_RANGE_VALUE,
    MAX_RANGE_VALUE, RESET_MIN_MAX,
]  # fmt: skip


def _sensor(oid: int, name: str, unit: str = "", extra: list[Row] | None = None) -> tuple[ObjectModel, ...]:
    """A measuring object in versions 1.0 and 1.1 (which added Application Type, timestamps, quality).

    The specification leaves the unit of 5700 Sensor Value to the device (5701 Sensor Units), so
    the customary unit goes into the description, not into ``units``: a device may report in another.
    """
    description = f"Customary unit: {unit}; the device states its own in 5701 Sensor Units." if unit else ""
    v1_0 = define(oid, name, _SENSOR + (extra or []), multiple=True, mandatory=False, description=description)
    v1_1 = revise(v1_0, version="1.1", rows=[APPLICATION_TYPE, *_TIMESTAMPS, *_QUALITY])
    return v1_0, v1_1


DIGITAL_INPUT_1_0 = define(
    3200, "Digital Input", multiple=True, mandatory=False,
    rows=[
        _mandatory(DIGITAL_INPUT_STATE), DIGITAL_INPUT_COUNTER, DIGITAL_INPUT_POLARITY,
        DIGITAL_INPUT_DEBOUNCE, DIGITAL_INPUT_EDGE_SELECTION, DIGITAL_INPUT_COUNTER_RESET, APPLICATION_TYPE,
        SENSOR_TYPE,
    ],
)  # fmt: skip
DIGITAL_INPUT_1_1 = revise(DIGITAL_INPUT_1_0, version="1.1", rows=_TIMESTAMPS)

DIGITAL_OUTPUT_1_0 = define(
    3201, "Digital Output", multiple=True, mandatory=False,
    rows=[_mandatory(DIGITAL_OUTPUT_STATE), DIGITAL_OUTPUT_POLARITY, APPLICATION_TYPE],
)  # fmt: skip
DIGITAL_OUTPUT_1_1 = revise(DIGITAL_OUTPUT_1_0, version="1.1", rows=_TIMESTAMPS)

ANALOG_INPUT_1_0 = define(
    3202, "Analog Input", multiple=True, mandatory=False,
    rows=[
        _mandatory(ANALOG_INPUT_CURRENT_VALUE), MIN_MEASURED_VALUE, MAX_MEASURED_VALUE, MIN_RANGE_VALUE,
        MAX_RANGE_VALUE, RESET_MIN_MAX, APPLICATION_TYPE, SENSOR_TYPE,
    ],
)  # fmt: skip
ANALOG_INPUT_1_1 = revise(ANALOG_INPUT_1_0, version="1.1", rows=[*_TIMESTAMPS, *_QUALITY])

ANALOG_OUTPUT_1_0 = define(
    3203, "Analog Output", multiple=True, mandatory=False,
    rows=[_mandatory(ANALOG_OUTPUT_CURRENT_VALUE), MIN_RANGE_VALUE, MAX_RANGE_VALUE, APPLICATION_TYPE],
)  # fmt: skip
ANALOG_OUTPUT_1_1 = revise(ANALOG_OUTPUT_1_0, version="1.1", rows=_TIMESTAMPS)

GENERIC_SENSOR = _sensor(3300, "Generic Sensor", extra=[APPLICATION_TYPE, SENSOR_TYPE])
ILLUMINANCE = _sensor(3301, "Illuminance", "lx")
TEMPERATURE = _sensor(3303, "Temperature", "Cel")
HUMIDITY = _sensor(3304, "Humidity", "%RH")
BAROMETER = _sensor(3315, "Barometer", "hPa")
VOLTAGE = _sensor(3316, "Voltage", "V", extra=[CURRENT_CALIBRATION, APPLICATION_TYPE])
CURRENT = _sensor(3317, "Current", "A", extra=[CURRENT_CALIBRATION, APPLICATION_TYPE])
PRESSURE = _sensor(3323, "Pressure", "Pa", extra=[CURRENT_CALIBRATION, APPLICATION_TYPE])
POWER = _sensor(3328, "Power", "W", extra=[CURRENT_CALIBRATION, APPLICATION_TYPE])

LIGHT_CONTROL_1_0 = define(
    3311, "Light Control", multiple=True, mandatory=False,
    rows=[
        _mandatory(ON_OFF), DIMMER, ON_TIME, CUMULATIVE_ACTIVE_POWER, POWER_FACTOR, COLOUR, SENSOR_UNITS,
        APPLICATION_TYPE,
    ],
)  # fmt: skip

POWER_CONTROL_1_0 = define(
    3312, "Power Control", multiple=True, mandatory=False,
    rows=[_mandatory(ON_OFF), DIMMER, ON_TIME, CUMULATIVE_ACTIVE_POWER, POWER_FACTOR, APPLICATION_TYPE],
)  # fmt: skip
POWER_CONTROL_1_1 = revise(POWER_CONTROL_1_0, version="1.1", rows=_TIMESTAMPS)

# The energy meter reports through 5700 Sensor Value (customarily Wh), not 5805 Cumulative active power.
ENERGY_1_0 = define(
    3331, "Energy", multiple=True, mandatory=False,
    description="Customary unit: Wh; the device states its own in 5701 Sensor Units.",
    rows=[_mandatory(SENSOR_VALUE), SENSOR_UNITS, RESET_CUMULATIVE_ENERGY, APPLICATION_TYPE],
)  # fmt: skip
ENERGY_1_1 = revise(ENERGY_1_0, version="1.1", rows=[*_TIMESTAMPS, *_QUALITY])

LOCATION_1_0 = define(
    3336, "Location", multiple=True, mandatory=False,
    rows=[
        _mandatory(LATITUDE), _mandatory(LONGITUDE), UNCERTAINTY, COMPASS_DIRECTION, VELOCITY, TIMESTAMP,
        APPLICATION_TYPE,
    ],
)  # fmt: skip
# 2.0 replaced the text coordinates (5514-5516) by numeric ones: a major version, not a superset.
LOCATION_2_0 = revise(
    LOCATION_1_0, version="2.0", drop=[LATITUDE[0], LONGITUDE[0], UNCERTAINTY[0]],
    rows=[
        _mandatory(NUMERIC_LATITUDE), _mandatory(NUMERIC_LONGITUDE), NUMERIC_UNCERTAINTY,
        FRACTIONAL_TIMESTAMP, *_QUALITY,
    ],
)  # fmt: skip

TIMER_1_0 = define(
    3340, "Timer", multiple=True, mandatory=False,
    rows=[
        _mandatory(DELAY_DURATION), REMAINING_TIME, MINIMUM_OFF_TIME, TRIGGER, ON_OFF, DIGITAL_INPUT_COUNTER,
        CUMULATIVE_TIME, DIGITAL_STATE, COUNTER, TIMER_MODE, APPLICATION_TYPE,
    ],
)  # fmt: skip

ADDRESSABLE_TEXT_DISPLAY_1_0 = define(
    3341, "Addressable Text Display", multiple=True, mandatory=False,
    rows=[
        _mandatory(TEXT), X_COORDINATE, Y_COORDINATE, MAX_X_COORDINATE, MAX_Y_COORDINATE, CLEAR_DISPLAY,
        LEVEL, CONTRAST, APPLICATION_TYPE,
    ],
)  # fmt: skip

ON_OFF_SWITCH_1_0 = define(
    3342, "On/Off switch", multiple=True, mandatory=False,
    rows=[_mandatory(DIGITAL_INPUT_STATE), DIGITAL_INPUT_COUNTER, ON_TIME, OFF_TIME, APPLICATION_TYPE],
)  # fmt: skip
ON_OFF_SWITCH_1_1 = revise(ON_OFF_SWITCH_1_0, version="1.1", rows=_TIMESTAMPS)

PUSH_BUTTON_1_0 = define(
    3347, "Push button", multiple=True, mandatory=False,
    rows=[_mandatory(DIGITAL_INPUT_STATE), DIGITAL_INPUT_COUNTER, APPLICATION_TYPE],
)  # fmt: skip
PUSH_BUTTON_1_1 = revise(PUSH_BUTTON_1_0, version="1.1", rows=_TIMESTAMPS)

MULTI_STATE_SELECTOR_1_0 = define(
    3348, "Multi-state Selector", multiple=True, mandatory=False,
    rows=[_mandatory(MULTI_STATE_INPUT), APPLICATION_TYPE],
)  # fmt: skip
MULTI_STATE_SELECTOR_1_1 = revise(MULTI_STATE_SELECTOR_1_0, version="1.1", rows=_TIMESTAMPS)

IPSO_MODELS: tuple[ObjectModel, ...] = (
    DIGITAL_INPUT_1_0,
    DIGITAL_INPUT_1_1,
    DIGITAL_OUTPUT_1_0,
    DIGITAL_OUTPUT_1_1,
    ANALOG_INPUT_1_0,
    ANALOG_INPUT_1_1,
    ANALOG_OUTPUT_1_0,
    ANALOG_OUTPUT_1_1,
    *GENERIC_SENSOR,
    *ILLUMINANCE,
    *TEMPERATURE,
    *HUMIDITY,
    LIGHT_CONTROL_1_0,
    POWER_CONTROL_1_0,
    POWER_CONTROL_1_1,
    *BAROMETER,
    *VOLTAGE,
    *CURRENT,
    *PRESSURE,
    *POWER,
    ENERGY_1_0,
    ENERGY_1_1,
    LOCATION_1_0,
    LOCATION_2_0,
    TIMER_1_0,
    ADDRESSABLE_TEXT_DISPLAY_1_0,
    ON_OFF_SWITCH_1_0,
    ON_OFF_SWITCH_1_1,
    PUSH_BUTTON_1_0,
    PUSH_BUTTON_1_1,
    MULTI_STATE_SELECTOR_1_0,
    MULTI_STATE_SELECTOR_1_1,
)
