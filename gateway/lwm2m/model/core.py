"""The OMA core objects as built-in definitions: Security (0), Server (1), Access Control (2), Device (3),
Connectivity Monitoring (4), Firmware Update (5), Location (6), Connectivity Statistics (7),
Software Management (9) and BinaryAppDataContainer (19).

Written from the LwM2M Core 1.0/1.1 specifications (Appendix E) and checked against the OMA object
registry; see ``table.py`` for the row notation. A core object registered without ``ver`` has the
version its client's enabler version implies (:data:`CORE_OBJECT_VERSIONS`: 1.0 for a LwM2M 1.0
client), others may register any version, so every version up to what LwM2M 1.1 clients use is
kept: Security and Server 1.0/1.1, Access Control 1.0/1.1, Device 1.0-1.2, Connectivity Monitoring
1.0-1.3, Firmware Update 1.0-1.2. The 1.2 versions of Security and Server need LwM2M 1.2, which this
server does not speak.

Ranges are informative text as in the DDF files (``"0..255"``, ``"0..255 bytes"``); units where the
specification gives them, even where the registry file leaves ``<Units>`` empty (mV, mA, KB).
"""

from __future__ import annotations

from gateway.lwm2m.model.table import (
    BOOL,
    FLOAT,
    INT,
    MAND,
    MANY,
    NO_OPS,
    NONE,
    OBJLNK,
    ONE,
    OPAQUE,
    OPT,
    RW,
    STR,
    TIME,
    UINT,
    E,
    R,
    W,
    define,
    revise,
)
from gateway.lwm2m.model.types import ObjectModel

# --- 0: LwM2M Security -------------------------------------------------------------------------------
# No operations: the resources are written by the bootstrap server only and never exposed to a server.
SECURITY_1_0 = define(
    0, "LWM2M Security", multiple=True, mandatory=True, lwm2m="1.0",
    rows=[
        # id   name                                 ops     inst  req   type    range             units
        (0,  "LWM2M Server URI",                   NO_OPS, ONE,  MAND, STR,    "0..255 bytes",   ""),
        (1,  "Bootstrap-Server",                   NO_OPS, ONE,  MAND, BOOL,   "",               ""),
        (2,  "Security Mode",                      NO_OPS, ONE,  MAND, INT,    "0..4",           ""),
        (3,  "Public Key or Identity",             NO_OPS, ONE,  MAND, OPAQUE, "",               ""),
        (4,  "Server Public Key",                  NO_OPS, ONE,  MAND, OPAQUE, "",               ""),
        (5,  "Secret Key",                         NO_OPS, ONE,  MAND, OPAQUE, "",               ""),
        (6,  "SMS Security Mode",                  NO_OPS, ONE,  OPT,  INT,    "0..255",         ""),
        (7,  "SMS Binding Key Parameters",         NO_OPS, ONE,  OPT,  OPAQUE, "6 bytes",        ""),
        (8,  "SMS Binding Secret Key(s)",          NO_OPS, ONE,  OPT,  OPAQUE, "16-32-48 bytes", ""),
        (9,  "LwM2M Server SMS Number",            NO_OPS, ONE,  OPT,  STR,    "",               ""),
        (10, "Short Server ID",                    NO_OPS, ONE,  OPT,  INT,    "1..65534",       ""),
        (11, "Client Hold Off Time",               NO_OPS, ONE,  OPT,  INT,    "",               "s"),
        (12, "Bootstrap-Server Account Timeout",   NO_OPS, ONE,  OPT,  INT,    "",               "s"),
    ],
)  # fmt: skip

SECURITY_1_1 = revise(
    SECURITY_1_0, version="1.1", lwm2m="1.1",
    rows=[
        (13, "Matching Type",                      NO_OPS, ONE,  OPT,  UINT,   "0..3",           ""),
        (14, "SNI",                                NO_OPS, ONE,  OPT,  STR,    "",               ""),
        (15, "Certificate Usage",                  NO_OPS, ONE,  OPT,  UINT,   "0..3",           ""),
        (16, "DTLS/TLS Ciphersuite",               NO_OPS, MANY, OPT,  UINT,   "",               ""),
        (17, "OSCORE Security Mode",               NO_OPS, ONE,  OPT,  OBJLNK, "",               ""),
    ],
)  # fmt: skip

# --- 1: LwM2M Server ---------------------------------------------------------------------------------
SERVER_1_0 = define(
    1, "LwM2M Server", multiple=True, mandatory=True, lwm2m="1.0",
    rows=[
        (0,  "Short Server ID",                    R,  ONE, MAND, INT,    "1..65534", ""),
        (1,  "Lifetime",                           RW, ONE, MAND, INT,    "",         "s"),
        (2,  "Default Minimum Period",             RW, ONE, OPT,  INT,    "",         "s"),
        (3,  "Default Maximum Period",             RW, ONE, OPT,  INT,    "",         "s"),
        (4,  "Disable",                            E,  ONE, OPT,  NONE,   "",         ""),
        (5,  "Disable Timeout",                    RW, ONE, OPT,  INT,    "",         "s"),
        (6,  "Notification Storing When Disabled or Offline", RW, ONE, MAND, BOOL, "", ""),
        (7,  "Binding",                            RW, ONE, MAND, STR,    "",         ""),
        (8,  "Registration Update Trigger",        E,  ONE, MAND, NONE,   "",         ""),
    ],
)  # fmt: skip

# 13-20 have no operations: only the bootstrap server configures them.
SERVER_1_1 = revise(
    SERVER_1_0, version="1.1", lwm2m="1.1",
    rows=[
        (9,  "Bootstrap-Request Trigger",          E,      ONE, OPT, NONE,   "",       ""),
        (10, "APN Link",                           RW,     ONE, OPT, OBJLNK, "",       ""),
        (11, "TLS-DTLS Alert Code",                R,      ONE, OPT, UINT,   "0..255", ""),
        (12, "Last Bootstrapped",                  R,      ONE, OPT, TIME,   "",       ""),
        (13, "Registration Priority Order",        NO_OPS, ONE, OPT, UINT,   "",       ""),
        (14, "Initial Registration Delay Timer",   NO_OPS, ONE, OPT, UINT,   "",       "s"),
        (15, "Registration Failure Block",         NO_OPS, ONE, OPT, BOOL,   "",       ""),
        (16, "Bootstrap on Registration Failure",  NO_OPS, ONE, OPT, BOOL,   "",       ""),
        (17, "Communication Retry Count",          NO_OPS, ONE, OPT, UINT,   "",       ""),
        (18, "Communication Retry Timer",          NO_OPS, ONE, OPT, UINT,   "",       "s"),
        (19, "Communication Sequence Delay Timer", NO_OPS, ONE, OPT, UINT,   "",       "s"),
        (20, "Communication Sequence Retry Count", NO_OPS, ONE, OPT, UINT,   "",       ""),
        (21, "Trigger",                            RW,     ONE, OPT, BOOL,   "",       ""),
        (22, "Preferred Transport",                RW,     ONE, OPT, STR,    "",       ""),
        (23, "Mute Send",                          RW,     ONE, OPT, BOOL,   "",       ""),
    ],
)  # fmt: skip

# --- 2: LwM2M Access Control -------------------------------------------------------------------------
ACCESS_CONTROL_1_0 = define(
    2, "LwM2M Access Control", multiple=True, mandatory=False, lwm2m="1.0",
    rows=[
        (0, "Object ID",                           R,  ONE,  MAND, INT, "1..65534", ""),
        (1, "Object Instance ID",                  R,  ONE,  MAND, INT, "0..65535", ""),
        (2, "ACL",                                 RW, MANY, OPT,  INT, "16 bits",  ""),
        (3, "Access Control Owner",                RW, ONE,  MAND, INT, "0..65535", ""),
    ],
)  # fmt: skip

# 1.1 only narrows the ACL to the five permission bits (R, W, E, D, C).
ACCESS_CONTROL_1_1 = revise(
    ACCESS_CONTROL_1_0, version="1.1",
    rows=[(2, "ACL", RW, MANY, OPT, INT, "0..31", "")],
)  # fmt: skip

# --- 3: Device ---------------------------------------------------------------------------------------
DEVICE_1_0 = define(
    3, "Device", multiple=False, mandatory=True, lwm2m="1.0",
    rows=[
        (0,  "Manufacturer",                       R,  ONE,  OPT,  STR,    "",       ""),
        (1,  "Model Number",                       R,  ONE,  OPT,  STR,    "",       ""),
        (2,  "Serial Number",                      R,  ONE,  OPT,  STR,    "",       ""),
        (3,  "Firmware Version",                   R,  ONE,  OPT,  STR,    "",       ""),
        (4,  "Reboot",                             E,  ONE,  MAND, NONE,   "",       ""),
        (5,  "Factory Reset",                      E,  ONE,  OPT,  NONE,   "",       ""),
        (6,  "Available Power Sources",            R,  MANY, OPT,  INT,    "0..7",   ""),
        (7,  "Power Source Voltage",               R,  MANY, OPT,  INT,    "",       "mV"),
        (8,  "Power Source Current",               R,  MANY, OPT,  INT,    "",       "mA"),
        (9,  "Battery Level",                      R,  ONE,  OPT,  INT,    "0..100", "%"),
        (10, "Memory Free",                        R,  ONE,  OPT,  INT,    "",       "KB"),
        (11, "Error Code",                         R,  MANY, MAND, INT,    "0..8",   ""),
        (12, "Reset Error Code",                   E,  ONE,  OPT,  NONE,   "",       ""),
        (13, "Current Time",                       RW, ONE,  OPT,  TIME,   "",       ""),
        (14, "UTC Offset",                         RW, ONE,  OPT,  STR,    "",       ""),
        (15, "Timezone",                           RW, ONE,  OPT,  STR,    "",       ""),
        (16, "Supported Binding and Modes",        R,  ONE,  MAND, STR,    "",       ""),
        (17, "Device Type",                        R,  ONE,  OPT,  STR,    "",       ""),
        (18, "Hardware Version",                   R,  ONE,  OPT,  STR,    "",       ""),
        (19, "Software Version",                   R,  ONE,  OPT,  STR,    "",       ""),
        (20, "Battery Status",                     R,  ONE,  OPT,  INT,    "0..6",   ""),
        (21, "Memory Total",                       R,  ONE,  OPT,  INT,    "",       "KB"),
        (22, "ExtDevInfo",                         R,  MANY, OPT,  OBJLNK, "",       ""),
    ],
)  # fmt: skip

# 1.1 changed descriptions only (the registry's 1.0 file already has ExtDevInfo); 1.2 widened Error Code.
DEVICE_1_1 = revise(DEVICE_1_0, version="1.1", lwm2m="1.1")
DEVICE_1_2 = revise(
    DEVICE_1_1, version="1.2",
    rows=[(11, "Error Code", R, MANY, MAND, INT, "0..32", "")],
)  # fmt: skip

# --- 4: Connectivity Monitoring ----------------------------------------------------------------------
CONNECTIVITY_MONITORING_1_0 = define(
    4, "Connectivity Monitoring", multiple=False, mandatory=False, lwm2m="1.0",
    rows=[
        (0,  "Network Bearer",                     R, ONE,  MAND, INT, "0..50",  ""),
        (1,  "Available Network Bearer",           R, MANY, MAND, INT, "0..50",  ""),
        (2,  "Radio Signal Strength",              R, ONE,  MAND, INT, "",       "dBm"),
        (3,  "Link Quality",                       R, ONE,  OPT,  INT, "",       ""),
        (4,  "IP Addresses",                       R, MANY, MAND, STR, "",       ""),
        (5,  "Router IP Addresses",                R, MANY, OPT,  STR, "",       ""),
        (6,  "Link Utilization",                   R, ONE,  OPT,  INT, "0..100", "%"),
        (7,  "APN",                                R, MANY, OPT,  STR, "",       ""),
        (8,  "Cell ID",                            R, ONE,  OPT,  INT, "",       ""),
        (9,  "SMNC",                               R, ONE,  OPT,  INT, "0..999", ""),
        (10, "SMCC",                               R, ONE,  OPT,  INT, "0..999", ""),
    ],
)  # fmt: skip

# Each later version adds one resource.
CONNECTIVITY_MONITORING_1_1 = revise(
    CONNECTIVITY_MONITORING_1_0, version="1.1",
    rows=[(11, "SignalSNR", R, ONE, OPT, INT, "", "dB")],
)  # fmt: skip
CONNECTIVITY_MONITORING_1_2 = revise(
    CONNECTIVITY_MONITORING_1_1, version="1.2", lwm2m="1.1",
    rows=[(12, "LAC", R, ONE, OPT, INT, "", "")],
)  # fmt: skip
CONNECTIVITY_MONITORING_1_3 = revise(
    CONNECTIVITY_MONITORING_1_2, version="1.3",
    rows=[(13, "Coverage Enhancement Level", R, ONE, OPT, INT, "0..4", "")],
)  # fmt: skip

# --- 5: Firmware Update ------------------------------------------------------------------------------
# No approved version has a resource 4 (a draft's "Update Supported Objects"); the id stays unused.
FIRMWARE_UPDATE_1_0 = define(
    5, "Firmware Update", multiple=False, mandatory=False, lwm2m="1.0",
    rows=[
        (0, "Package",                             W,  ONE,  MAND, OPAQUE, "",             ""),
        (1, "Package URI",                         RW, ONE,  MAND, STR,    "0..255 bytes", ""),
        (2, "Update",                              E,  ONE,  MAND, NONE,   "",             ""),
        (3, "State",                               R,  ONE,  MAND, INT,    "0..3",         ""),
        (5, "Update Result",                       R,  ONE,  MAND, INT,    "0..9",         ""),
        (6, "PkgName",                             R,  ONE,  OPT,  STR,    "0..255 bytes", ""),
        (7, "PkgVersion",                          R,  ONE,  OPT,  STR,    "0..255 bytes", ""),
        (8, "Firmware Update Protocol Support",    R,  MANY, OPT,  INT,    "0..5",         ""),
        (9, "Firmware Update Delivery Method",     R,  ONE,  MAND, INT,    "0..2",         ""),
    ],
)  # fmt: skip

FIRMWARE_UPDATE_1_1 = revise(
    FIRMWARE_UPDATE_1_0, version="1.1", lwm2m="1.1",
    rows=[
        (5,  "Update Result",                      R,  ONE,  MAND, INT,    "0..11",        ""),
        (10, "Cancel",                             E,  ONE,  OPT,  NONE,   "",             ""),
        (11, "Severity",                           RW, ONE,  OPT,  INT,    "0..2",         ""),
        (12, "Last State Change Time",             R,  ONE,  OPT,  TIME,   "",             ""),
        (13, "Maximum Defer Period",               RW, ONE,  OPT,  UINT,   "",             "s"),
    ],
)  # fmt: skip
FIRMWARE_UPDATE_1_2 = revise(
    FIRMWARE_UPDATE_1_1, version="1.2",
    rows=[(14, "Automatic Upgrade at Download", RW, ONE, OPT, BOOL, "", "")],
)  # fmt: skip

# --- 6: Location -------------------------------------------------------------------------------------
LOCATION_1_0 = define(
    6, "Location", multiple=False, mandatory=False, lwm2m="1.0",
    rows=[
        (0, "Latitude",                            R, ONE, MAND, FLOAT,  "", "lat"),
        (1, "Longitude",                           R, ONE, MAND, FLOAT,  "", "lon"),
        (2, "Altitude",                            R, ONE, OPT,  FLOAT,  "", "m"),
        (3, "Radius",                              R, ONE, OPT,  FLOAT,  "", "m"),
        (4, "Velocity",                            R, ONE, OPT,  OPAQUE, "", ""),
        (5, "Timestamp",                           R, ONE, MAND, TIME,   "", ""),
        (6, "Speed",                               R, ONE, OPT,  FLOAT,  "", "m/s"),
    ],
)  # fmt: skip

# --- 7: Connectivity Statistics ----------------------------------------------------------------------
CONNECTIVITY_STATISTICS_1_0 = define(
    7, "Connectivity Statistics", multiple=False, mandatory=False, lwm2m="1.0",
    rows=[
        (0, "SMS Tx Counter",                      R,  ONE, OPT,  INT,  "", ""),
        (1, "SMS Rx Counter",                      R,  ONE, OPT,  INT,  "", ""),
        (2, "Tx Data",                             R,  ONE, OPT,  INT,  "", "KB"),
        (3, "Rx Data",                             R,  ONE, OPT,  INT,  "", "KB"),
        (4, "Max Message Size",                    R,  ONE, OPT,  INT,  "", "B"),
        (5, "Average Message Size",                R,  ONE, OPT,  INT,  "", "B"),
        (6, "Start",                               E,  ONE, MAND, NONE, "", ""),
        (7, "Stop",                                E,  ONE, MAND, NONE, "", ""),
        (8, "Collection Period",                   RW, ONE, OPT,  INT,  "", "s"),
    ],
)  # fmt: skip

# --- 9: LwM2M Software Management --------------------------------------------------------------------
SOFTWARE_MANAGEMENT_1_0 = define(
    9, "LWM2M Software Management", multiple=True, mandatory=False, lwm2m="1.0",
    rows=[
        (0,  "PkgName",                            R,  ONE,  MAND, STR,    "0..255 bytes", ""),
        (1,  "PkgVersion",                         R,  ONE,  MAND, STR,    "0..255 bytes", ""),
        (2,  "Package",                            W,  ONE,  OPT,  OPAQUE, "",             ""),
        (3,  "Package URI",                        W,  ONE,  OPT,  STR,    "0..255 bytes", ""),
        (4,  "Install",                            E,  ONE,  MAND, NONE,   "",             ""),
        (5,  "Checkpoint",                         R,  ONE,  OPT,  OBJLNK, "",             ""),
        (6,  "Uninstall",                          E,  ONE,  MAND, NONE,   "",             ""),
        (7,  "Update State",                       R,  ONE,  MAND, INT,    "0..4",         ""),
        (8,  "Update Supported Objects",           RW, ONE,  OPT,  BOOL,   "",             ""),
        (9,  "Update Result",                      R,  ONE,  MAND, INT,    "0..200",       ""),
        (10, "Activate",                           E,  ONE,  MAND, NONE,   "",             ""),
        (11, "Deactivate",                         E,  ONE,  MAND, NONE,   "",             ""),
        (12, "Activation State",                   R,  ONE,  MAND, BOOL,   "",             ""),
        (13, "Package Settings",                   RW, ONE,  OPT,  OBJLNK, "",             ""),
        (14, "User Name",                          W,  ONE,  OPT,  STR,    "0..255 bytes", ""),
        (15, "Password",                           W,  ONE,  OPT,  STR,    "0..255 bytes", ""),
        (16, "Status Reason",                      R,  ONE,  OPT,  STR,    "",             ""),
        (17, "Software Component Link",            R,  MANY, OPT,  OBJLNK, "",             ""),
        (18, "Software Component tree length",     R,  ONE,  OPT,  INT,    "0..255",       ""),
    ],
)  # fmt: skip

# --- 19: BinaryAppDataContainer ----------------------------------------------------------------------
BINARY_APP_DATA_CONTAINER_1_0 = define(
    19, "BinaryAppDataContainer", multiple=True, mandatory=False, lwm2m="1.0",
    rows=[
        (0, "Data",                                RW, MANY, MAND, OPAQUE, "",         ""),
        (1, "Data Priority",                       RW, ONE,  OPT,  INT,    "1 byte",   ""),
        (2, "Data Creation Time",                  RW, ONE,  OPT,  TIME,   "",         ""),
        (3, "Data Description",                    RW, ONE,  OPT,  STR,    "32 bytes", ""),
        (4, "Data Format",                         RW, ONE,  OPT,  STR,    "32 bytes", ""),
        (5, "App ID",                              RW, ONE,  OPT,  INT,    "2 bytes",  ""),
    ],
)  # fmt: skip

# The version of each core object that a client of a given LwM2M enabler version means when it
# registers the object without ``ver`` (Core 1.1.1, 7.2.3; stated plainly in Core 1.2, 7.2.3).
# For 1.1 these are the 1.1.1 versions, which are backward compatible with the 1.1.0 ones (Device 1.0,
# Connectivity Monitoring 1.1). Objects not listed here (IPSO, ...) default to 1.0.
CORE_OBJECT_VERSIONS: dict[str, dict[int, str]] = {
    "1.0": {0: "1.0", 1: "1.0", 2: "1.0", 3: "1.0", 4: "1.0", 5: "1.0", 6: "1.0", 7: "1.0"},
    "1.1": {0: "1.1", 1: "1.1", 2: "1.0", 3: "1.1", 4: "1.2", 5: "1.0", 6: "1.0", 7: "1.0", 21: "1.0"},
}

CORE_MODELS: tuple[ObjectModel, ...] = (
    SECURITY_1_0,
    SECURITY_1_1,
    SERVER_1_0,
    SERVER_1_1,
    ACCESS_CONTROL_1_0,
    ACCESS_CONTROL_1_1,
    DEVICE_1_0,
    DEVICE_1_1,
    DEVICE_1_2,
    CONNECTIVITY_MONITORING_1_0,
    CONNECTIVITY_MONITORING_1_1,
    CONNECTIVITY_MONITORING_1_2,
    CONNECTIVITY_MONITORING_1_3,
    FIRMWARE_UPDATE_1_0,
    FIRMWARE_UPDATE_1_1,
    FIRMWARE_UPDATE_1_2,
    LOCATION_1_0,
    CONNECTIVITY_STATISTICS_1_0,
    SOFTWARE_MANAGEMENT_1_0,
    BINARY_APP_DATA_CONTAINER_1_0,
)
