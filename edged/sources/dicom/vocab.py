"""What a DICOM string may say when it leaves the device: the vocabularies of coded attributes.

A peer controls every byte of a dataset. A corrupted length can make Modality swallow the
patient's name and birth date that follow it; a hostile modality can write anything into
BodyPartExamined. So no dataset string reaches a payload or an event because it *looks*
harmless: a coded attribute leaves only as one of its DICOM defined terms (PS3.3, PS3.16
Annex L) or a term a loaded model's accept rules name (the site wrote those), else as a code:

* ``invalid``: the value breaks its VR (CS: at most 16 of ``A-Z 0-9 _`` and space);
* ``unlisted``: a well-formed code string that is not in the vocabulary — it could be anything,
  a surname included, so it is not repeated.

AE titles are checked against their VR (16 printable ASCII characters, no backslash).
Everything here runs in time linear in the input and reads at most :data:`MAX_RAW` characters.
"""

from __future__ import annotations

from collections.abc import Iterable

INVALID, UNLISTED = "invalid", "unlisted"
MAX_RAW = 64  # a CS value is at most 16 characters; anything much longer is not one
UNREADABLE = object()  # an element pydicom could not read (corrupted length, unknown VR)

MODALITIES = frozenset("""
AR ASMT AU BDUS BI BMD CFM CR CT CTPROTOCOL DMS DG DOC DX ECG EEG EMG EOG EPS ES FID GM HC HD IO IOL IVOCT
IVUS KER KO LEN LS MG MR M3D NM OAM OCT OP OPM OPT OPTBSV OPTENF OPV OSS OT PA PLAN POS PR PT PX REG RESP RF
RG RTDOSE RTIMAGE RTINTENT RTPLAN RTRAD RTRECORD RTSEGANN RTSTRUCT RWV SEG SM SMR SR SRF STAIN TEXTUREMAP TG
US VA XA XAPROTOCOL XC
CD CF CP CS DD DF DM DS EC FA FS LP MA MS OPR ST VF
""".split())

VIEW_POSITIONS = frozenset("AP PA LL RL RLD LLD RLO LLO".split())

PHOTOMETRIC = frozenset({
    "MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB", "HSV", "ARGB", "CMYK", "YBR_FULL", "YBR_FULL_422",
    "YBR_PARTIAL_422", "YBR_PARTIAL_420", "YBR_ICT", "YBR_RCT", "XYB",
})

# PS3.16 Annex L, Body Part Examined defined terms (the ones CR/DX/CT/MR devices send).
BODY_PARTS = frozenset("""
ABDOMEN ABDOMENPELVIS ABDOMINALAORTA ACJOINT ADRENAL AMNIOTICFLUID ANKLE ANTECUBITALV ANTTIBIALA AORTA
AORTICARCH APPENDIX ARM ASCAORTA AXILLA AXILLARYA AXILLARYV BACK BASILARA BILEDUCT BLADDER BRACHIALA
BRACHIALV BRAIN BREAST BRONCHUS BUTTOCK CALCANEUS CALF CAROTID CELIACA CEPHALICV CEREBELLUM CEREBRALA
CERVIX CHEEK CHEST CHESTABDOMEN CHESTABDPELVIS CIRCLEOFWILLIS CLAVICLE COCCYX COLON COMMONILIACA
COMMONILIACV CORNEA CORONARYARTERY CSPINE CTSPINE CUBITALV DUODENUM EAR ELBOW ESOPHAGUS EXTREMITY EYE
EYELID FACE FEMORALA FEMORALV FEMUR FIBULA FINGER FOOT GALLBLADDER HAND HEAD HEADNECK HEART HEPATICA
HEPATICV HIP HUMERUS IAC ILEUM ILIUM INNOMINATEA INNOMINATEV INTCAROTIDA JAW JEJUNUM KIDNEY KNEE LARYNX
LEG LIVER LSPINE LSSPINE LUNG MAXILLA MEDIASTINUM MESENTRCA MOUTH NECK NECKCHEST NECKCHESTABDOMEN
NECKCHESTABDPELV NOSE ORBIT OVARY PANCREAS PAROTID PATELLA PELVIS PENIS PHARYNX POPLITEALA POPLITEALV
PROSTATE PULMONARYA RADIUS RADIUSULNA RECTUM RENALA RENALV RIB SCALP SCAPULA SCLERA SCROTUM SHOULDER
SKULL SPINE SPLEEN SSPINE STERNUM STOMACH SUBCLAVIANA SUBCLAVIANV SUBMANDIBULAR TESTIS THIGH THUMB THYMUS
THYROID TIBIA TIBIAFIBULA TLSPINE TMJ TOE TONGUE TRACHEA TSPINE ULNA URETER URETHRA UTERUS VAGINA VULVA
WHOLEBODY WRIST ZYGOMA
""".split())

_CS_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_ ")


def code_string(value: object) -> str | None:
    """A CS value normalized (stripped, upper case), ``INVALID`` when it breaks the VR, None when empty."""
    if value is None:
        return None
    if value is UNREADABLE:
        return INVALID
    if isinstance(value, bytes):
        value = value[:MAX_RAW].decode("ascii", "replace")
    text = str(value)[:MAX_RAW].strip().upper()
    if not text:
        return None
    if len(text) > 16 or not _CS_CHARS.issuperset(text):
        return INVALID
    return text


def coded(value: object, vocabulary: Iterable[str], extra: Iterable[str] = ()) -> str | None:
    """``value`` when it is a term of ``vocabulary`` or ``extra``; else ``invalid``/``unlisted``."""
    text = code_string(value)
    if text is None or text == INVALID:
        return text
    if text in vocabulary or text in extra:
        return text
    return UNLISTED


def ae_title(value: object) -> str:
    """An AE title as the VR allows it (1-16 printable ASCII, no backslash), else ``invalid``."""
    text = (value.decode("ascii", "replace") if isinstance(value, bytes) else str(value or ""))[:MAX_RAW].strip()
    if not text:
        return "unknown"
    if len(text) > 16 or "\\" in text or not all(" " <= c <= "~" for c in text):
        return INVALID
    return text
