"""De-identification: DICOM PS3.15 Annex E, Basic Application Confidentiality Profile.

What is done to each instance (see :data:`ACTIONS` for the attribute table, after PS3.15
Table E.1-1, "Basic Prof." column):

* ``X`` remove, ``Z`` replace with an empty value (type-2 attributes), ``D`` replace with a
  dummy value, ``U`` replace a UID by a new one — the same new UID for the same old UID
  everywhere in the run, so a study stays a study, series stay series, references
  (ReferencedSOPInstanceUID, FrameOfReferenceUID, SourceImageSequence) stay consistent.
  Attributes the table lists as ``X/D``, ``X/Z/D`` etc. are removed or emptied (the type-1
  ones in common image IODs are not in that group).
* Rules for what the table cannot list: every private element, every public element unknown
  to pydicom's dictionary and the curve (50xx) and overlay (60xx) groups are removed; any
  other person name (PN) is removed; every date and
  datetime (DA/DT) is removed; free text that is kept (LO, SH, ST, LT, UT) has dates in any
  common spelling (19010203, 1901-02-03, 03.02.1901, 3/2/1901) and the patient's registered
  identifiers replaced; every UID (UI) that is not a registered DICOM UID
  (``1.2.840.10008.*``) or a class/transfer-syntax UID is remapped; sequences are cleaned
  recursively.
* Patient name and ID become one pseudonym ``ANON-<10 hex>`` (a salted hash of the original
  ID, so two studies of one patient in one run share it); birth date and sex become empty.
* Geometry (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness,
  ...) and pixel data are kept byte for byte: nothing is decoded or re-encoded.
* PatientIdentityRemoved = YES, DeidentificationMethod and its code sequence (DCM 113100),
  LongitudinalTemporalInformationModified = REMOVED are added.
* Instances flagged ``BurnedInAnnotation = YES`` are refused: their pixels may show the
  patient's name and this module does not clean pixels.

The mapping table (original UIDs and IDs -> replacements) is PHI. It is written only to the
file the user names (``--map FILE``; mode 0600) and reused from it, which also makes later
runs map the same patient and UIDs the same way. Without it the salt is random per run and
nothing that links back to the patient is kept anywhere.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DicomError

METHOD = "PS3.15 Basic Application Confidentiality Profile (surgitwin)"  # LO: <= 64 chars
BASIC_PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
PSEUDONYM_PREFIX = "ANON-"

# keyword -> action. "X" remove, "Z" empty, "D" dummy, "U" new UID, "K" keep.
_X = """AcquisitionComments AcquisitionContextSequence AcquisitionDate
AcquisitionDeviceProcessingDescription AcquisitionTime ActualHumanPerformersSequence
AdditionalPatientHistory AdmissionID AdmittingDate AdmittingDiagnosesCodeSequence
AdmittingDiagnosesDescription AdmittingTime Allergies Arbitrary AuthorObserverSequence
BranchOfService CassetteID CommentsOnThePerformedProcedureStep
ConfidentialityConstraintOnPatientDataDescription ContentCreatorIdentificationCodeSequence
ContentSequence CountryOfResidence CurrentPatientLocation CurveDate CurveTime
CustodialOrganizationSequence DataSetTrailingPadding DerivationDescription DetectorID
DigitalSignaturesSequence DischargeDiagnosisDescription DistributionAddress
DistributionName EthnicGroup FrameComments GantryID GeneratorID HumanPerformerName
HumanPerformerOrganization IconImageSequence IdentifyingComments ImageComments
ImagePresentationComments ImagingServiceRequestComments Impressions InstanceCreationDate
InstanceCreationTime InstitutionAddress InstitutionCodeSequence InstitutionName
InstitutionalDepartmentName InsurancePlanIdentification
IntendedRecipientsOfResultsIdentificationSequence InterpretationApproverSequence
InterpretationAuthor InterpretationDiagnosisDescription InterpretationIDIssuer
InterpretationRecorder InterpretationText InterpretationTranscriber IssuerOfAdmissionID
IssuerOfPatientID IssuerOfServiceEpisodeID MAC MedicalAlerts MedicalRecordLocator MilitaryRank
ModifiedAttributesSequence ModifiedImageDescription ModifyingDeviceID
ModifyingDeviceManufacturer NameOfPhysiciansReadingStudy NamesOfIntendedRecipientsOfResults
Occupation OperatorIdentificationSequence OperatorsName OriginalAttributesSequence
OrderCallbackPhoneNumber OrderEnteredBy OrderEntererLocation OtherPatientIDs
OtherPatientIDsSequence OtherPatientNames ParticipantSequence PatientAddress PatientAge
PatientBirthName PatientBirthTime PatientComments PatientInstitutionResidence
PatientInsurancePlanCodeSequence PatientMotherBirthName PatientPrimaryLanguageCodeSequence
PatientPrimaryLanguageModifierCodeSequence PatientReligiousPreference PatientSexNeutered
PatientSize PatientState PatientTelephoneNumbers PatientTransportArrangements PatientWeight
PerformedLocation PerformedProcedureStepDescription PerformedProcedureStepEndDate
PerformedProcedureStepEndTime PerformedProcedureStepID PerformedProcedureStepStartDate
PerformedProcedureStepStartTime PerformedStationAETitle
PerformedStationGeographicLocationCodeSequence PerformedStationName
PerformedStationNameCodeSequence PerformingPhysicianIdentificationSequence
PerformingPhysicianName PersonAddress PersonTelephoneNumbers PhysicianApprovingInterpretation
PhysiciansOfRecord PhysiciansOfRecordIdentificationSequence
PhysiciansReadingStudyIdentificationSequence PlateID PreMedication PregnancyStatus
ProtocolName ReasonForTheImagingServiceRequest ReasonForStudy ReferencedDigitalSignatureSequence
ReferencedPatientAliasSequence ReferencedPatientSequence
ReferencedPerformedProcedureStepSequence ReferencedSOPInstanceMACSequence
ReferencedStudySequence ReferringPhysicianAddress ReferringPhysicianIdentificationSequence
ReferringPhysicianTelephoneNumbers RegionOfResidence RequestAttributesSequence
RequestedContrastAgent RequestedProcedureComments RequestedProcedureDescription
RequestedProcedureID RequestedProcedureLocation RequestingPhysician RequestingService
ResponsibleOrganization ResponsiblePerson ResultsComments ResultsDistributionListSequence
ResultsIDIssuer ReviewerName ScheduledHumanPerformersSequence
ScheduledPatientInstitutionResidence ScheduledPerformingPhysicianIdentificationSequence
ScheduledPerformingPhysicianName ScheduledProcedureStepDescription
ScheduledProcedureStepEndDate ScheduledProcedureStepEndTime ScheduledProcedureStepLocation
ScheduledProcedureStepStartDate ScheduledProcedureStepStartTime ScheduledStationAETitle
ScheduledStationGeographicLocationCodeSequence ScheduledStationName
ScheduledStationNameCodeSequence ScheduledStudyLocation ScheduledStudyLocationAETitle
SeriesDate SeriesDescription SeriesTime ServiceEpisodeDescription ServiceEpisodeID
SmokingStatus SpecialNeeds StationName StudyComments StudyDescription StudyIDIssuer
TextComments TextString TimezoneOffsetFromUTC TopicAuthor TopicKeywords TopicSubject
TopicTitle VerifyingOrganization VisitComments DateOfLastCalibration TimeOfLastCalibration
DateOfSecondaryCapture TimeOfSecondaryCapture InstitutionalDepartmentTypeCodeSequence
PatientTelecomInformation ReferencedPatientPhotoSequence
IssuerOfPatientIDQualifiersSequence ScheduledProcedureStepID StorageMediaFileSetID
ReasonForTheRequestedProcedure DeviceDescription LabelText"""
_Z = """AccessionNumber ContentCreatorName ContrastBolusAgent
FillerOrderNumberImagingServiceRequest PatientBirthDate PatientSex
PlacerOrderNumberImagingServiceRequest ReferringPhysicianName StudyDate StudyID StudyTime
VerifyingObserverIdentificationCodeSequence"""
# Dummies also where the table allows removal but an IOD we write or read needs the attribute
# (type 1: DeviceSerialNumber in Enhanced General Equipment; ContentDate/Time in SEG and
# enhanced images; AcquisitionDateTime in Enhanced CT/MR): "X/Z/D", "Z/D", "X/D" -> D.
_D = """PersonName VerifyingObserverName PersonIdentificationCodeSequence DeviceSerialNumber ContentDate
ContentTime AcquisitionDateTime"""
_U = """ConcatenationUID ContextGroupExtensionCreatorUID CreatorVersionUID DeviceUID
DimensionOrganizationUID DoseReferenceUID FailedSOPInstanceUIDList FiducialUID
FrameOfReferenceUID InstanceCreatorUID IrradiationEventUID LargePaletteColorLookupTableUID
MediaStorageSOPInstanceUID ReferencedFrameOfReferenceUID
ReferencedGeneralPurposeScheduledProcedureStepTransactionUID ReferencedSOPInstanceUID
ReferencedSOPInstanceUIDInFile RelatedFrameOfReferenceUID SeriesInstanceUID SOPInstanceUID
StorageMediaFileSetUID StudyInstanceUID SynchronizationFrameOfReferenceUID
TemplateExtensionCreatorUID TemplateExtensionOrganizationUID TransactionUID UID"""
ACTIONS: dict[str, str] = {}
for _codes, _act in ((_X, "X"), (_Z, "Z"), (_D, "D"), (_U, "U")):
    ACTIONS.update({kw: _act for kw in _codes.split()})
# Class and syntax UIDs name *kinds* of things, not patients: never remapped.
_KEEP_UIDS = ("SOPClassUID", "ReferencedSOPClassUID", "MediaStorageSOPClassUID", "TransferSyntaxUID",
              "ImplementationClassUID", "CodingSchemeUID", "ReferencedSOPClassUIDInFile",
              "RelatedGeneralSOPClassUID", "OriginalSpecializedSOPClassUID", "MappingResourceUID",
              "ContextUID", "PrivateInformationCreatorUID", "SOPClassesInStudy")
_META_REMOVE = ("SourceApplicationEntityTitle", "SendingApplicationEntityTitle",
                "ReceivingApplicationEntityTitle", "PrivateInformation", "PrivateInformationCreatorUID")
_DUMMY = {"PN": "ANONYMOUS", "DA": "19000101", "TM": "000000", "DT": "19000101000000",
          "LO": "ANONYMIZED", "SH": "ANON", "LT": "", "ST": "", "UT": "", "CS": "", "AS": "000Y"}


_TEXT_VRS = ("LO", "SH", "ST", "LT", "UT")
_D2, _M2, _Y4 = r"(?:0?[1-9]|[12]\d|3[01])", r"(?:0?[1-9]|1[0-2])", r"(?:1[89]\d{2}|20\d{2})"
# Dates written in free text: 19010203, 1901-02-03, 1901/2/3, 03.02.1901, 3/2/1901, 03-02-1901
DATE_IN_TEXT = re.compile(
    rf"(?<![\w.]){_Y4}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?![\w.])"
    rf"|(?<![\w.]){_Y4}[-./]{_M2}[-./]{_D2}(?![\w.])"
    rf"|(?<![\w.]){_D2}[-./]{_D2}[-./]{_Y4}(?![\w.])")
TEXT_DATE_REPLACEMENT = "[DATE]"


def scrub_text(text: str) -> str:
    """Free text kept by the profile, with dates (any common spelling) and every identifier
    registered for the patient (names, IDs, birth date) replaced."""
    from .batch import phi

    return phi.redact(DATE_IN_TEXT.sub(TEXT_DATE_REPLACEMENT, text))


def hashed_uid(*parts: str) -> str:
    """A ``2.25.`` UID (128 bits of SHA-256 of ``parts``): the same parts give the same UID."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


@dataclass
class Deidentifier:
    """Stateful PS3.15 Basic-profile de-identifier; one per run so UIDs map consistently.

    Parameters
    ----------
    salt : str, optional
        Secret mixed into every replacement; random when not given (no link back to the
        patient survives the run unless the mapping is saved).
    allow_burned_in : bool
        Accept instances marked ``BurnedInAnnotation = YES`` (their pixels are NOT cleaned).
    keep_private : bool
        Keep private elements (not PS3.15-compliant without a per-tag review; off by default).
    """

    salt: str = field(default_factory=lambda: secrets.token_hex(16))
    allow_burned_in: bool = False
    keep_private: bool = False
    uid_map: dict[str, str] = field(default_factory=dict)
    patient_map: dict[str, str] = field(default_factory=dict)

    # -- replacements -----------------------------------------------------------------------
    def uid(self, old: str) -> str:
        """The replacement for ``old`` (a ``2.25.`` UUID-derived UID), the same every call."""
        old = str(old).strip()
        if not old:
            return old
        new = self.uid_map.get(old)
        if new is None:
            # derived from salt and UID (pydicom's generate_uid ignores its entropy sources
            # under the 2.25 root): every worker of a batch maps a UID the same way
            new = hashed_uid(self.salt, old)
            self.uid_map[old] = new
        return new

    def pseudonym(self, patient_id: str, patient_name: str = "") -> str:
        """``ANON-`` + 10 hex of a salted hash of the patient's ID (name when the ID is empty)."""
        key = (patient_id or "").strip() or f"name:{(patient_name or '').strip()}"
        p = self.patient_map.get(key)
        if p is None:
            digest = hashlib.sha256(f"{self.salt}\x00{key}".encode()).hexdigest()[:10].upper()
            p = self.patient_map[key] = PSEUDONYM_PREFIX + digest
        return p

    # -- datasets ---------------------------------------------------------------------------
    def dataset(self, ds, *, where: str = "dataset"):
        """De-identify a pydicom Dataset in place and return it.

        Raises
        ------
        DicomError
            ``BurnedInAnnotation`` is YES and ``allow_burned_in`` is False.
        """
        from pydicom.dataset import Dataset
        from pydicom.sequence import Sequence

        from .batch import phi

        phi.register_dataset(ds)  # from here on, logs and error texts cannot leak these values
        if str(ds.get("BurnedInAnnotation", "")).upper() == "YES" and not self.allow_burned_in:
            raise DicomError("instance has BurnedInAnnotation = YES: its pixels may show identifying text, "
                             "which the Basic profile does not clean here (use allow_burned_in to accept)",
                             path=where, rule="PS3.15 E.1: burned-in annotation")
        pseudo = self.pseudonym(str(ds.get("PatientID", "") or ""), str(ds.get("PatientName", "") or ""))
        self._clean(ds)
        ds.PatientName = pseudo
        ds.PatientID = pseudo
        ds.PatientBirthDate = ""
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = METHOD
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = BASIC_PROFILE_CODE
        ds.DeidentificationMethodCodeSequence = Sequence([code])
        ds.LongitudinalTemporalInformationModified = "REMOVED"
        meta = getattr(ds, "file_meta", None)
        if meta is not None:
            for kw in _META_REMOVE:
                if kw in meta:
                    delattr(meta, kw)
            if "SOPInstanceUID" in ds:
                meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        return ds

    def _clean(self, ds) -> None:
        for elem in list(ds):
            tag = elem.tag
            group = tag.group
            if tag.is_private:
                if not self.keep_private:
                    del ds[tag]
                continue
            if 0x5000 <= group <= 0x50FF or 0x6000 <= group <= 0x60FF:
                del ds[tag]  # curves; overlays (burnt-in style graphics and comments)
                continue
            kw = elem.keyword
            action = ACTIONS.get(kw)
            if action is None:
                action = self._generic_action(elem)
            self._apply(ds, elem, action)

    def _generic_action(self, elem) -> str:
        vr = elem.VR
        if not elem.keyword:
            return "X"  # a public tag this pydicom does not know: its meaning cannot be vetted
        if vr == "SQ":
            return "recurse"
        if vr == "PN":
            return "X"
        if vr in ("DA", "DT"):
            return "X"
        if vr == "UI":
            return "K" if elem.keyword in _KEEP_UIDS else "U"
        if vr in _TEXT_VRS:
            return "T"  # kept free text: dates and registered identifiers scrubbed
        return "K"

    def _apply(self, ds, elem, action: str) -> None:
        tag = elem.tag
        if action == "X":
            del ds[tag]
        elif action == "Z":
            elem.value = [] if elem.VR == "SQ" else ""
        elif action == "D":
            if elem.VR == "SQ":
                for item in elem.value:
                    self._clean(item)
            else:
                elem.value = _DUMMY.get(elem.VR, "")
        elif action == "U":
            elem.value = self._map_uids(elem.value)
        elif action == "recurse":
            for item in elem.value:
                self._clean(item)
        elif action == "T":
            v = elem.value
            if isinstance(v, str):
                elem.value = scrub_text(v)
            elif isinstance(v, (list, tuple)) or type(v).__name__ == "MultiValue":
                elem.value = [scrub_text(str(x)) for x in v]

    def _map_uids(self, value):
        if value is None or value == "":
            return value
        if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
            return [self._map_one(v) for v in value]
        return self._map_one(value)

    def _map_one(self, v) -> str:
        s = str(v)
        # Registered DICOM UIDs (SOP classes, transfer syntaxes, coding schemes) identify nobody.
        return s if s.startswith("1.2.840.10008.") else self.uid(s)

    # -- mapping table ----------------------------------------------------------------------
    def mapping(self) -> dict:
        """The re-identification table (PHI): salt, UID map, patient ID -> pseudonym."""
        return {"format": "surgitwin-deid-map/1", "salt": self.salt, "uids": dict(self.uid_map),
                "patients": dict(self.patient_map)}

    @classmethod
    def from_mapping(cls, mapping: dict, **kw) -> "Deidentifier":
        if mapping.get("format") != "surgitwin-deid-map/1":
            raise DicomError(f"de-identification map must have format 'surgitwin-deid-map/1'; found {mapping.get('format')!r}")
        return cls(salt=mapping["salt"], uid_map=dict(mapping.get("uids", {})),
                   patient_map=dict(mapping.get("patients", {})), **kw)

    def merge(self, mapping: dict) -> None:
        """Add entries produced by another process that used the same salt."""
        if mapping.get("salt") != self.salt:
            raise DicomError("cannot merge de-identification maps made with different salts")
        self.uid_map.update(mapping.get("uids", {}))
        self.patient_map.update(mapping.get("patients", {}))


def load_mapping(path) -> dict | None:
    """The saved mapping at ``path`` or None when the file does not exist yet."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise DicomError(f"de-identification map is not valid JSON ({e.msg} at line {e.lineno})", path=str(p)) from None


def save_mapping(path, mapping: dict) -> None:
    """Write the mapping atomically, readable by its owner only (it re-identifies patients)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".tmp-{os.getpid()}-{p.name}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(mapping, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, p)


@dataclass
class DeidReport:
    """What :func:`deidentify_tree` did. ``written``: output files; ``skipped``: (file, reason) for
    everything not written (non-DICOM files and FIFOs included); ``refused``: the DICOM
    instances among them that could not be de-identified."""

    written: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)  # DICOM files that could not be processed
    studies: dict[str, int] = field(default_factory=dict)  # new StudyInstanceUID -> instances


def _input_files(src: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Regular files under ``src`` and (path, reason) for what is never opened (FIFOs...)."""
    from .ingest._common import not_regular, walk_files

    if not src.is_dir():
        why = not_regular(src)
        return ([], [(str(src), why)]) if why else ([src], [])
    return walk_files(src)


def deidentify_file(src, out_dir, deid: Deidentifier) -> Path:
    """De-identify one DICOM file into ``out_dir/<Study UID>/<Series UID>/<SOP UID>.dcm``.

    Only new UIDs name the output (a source folder name may be the patient's name).
    Raises DicomError when the file is not a DICOM instance or is refused.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    src = Path(src)
    try:
        ds = pydicom.dcmread(str(src))
    except InvalidDicomError:
        try:  # a raw dataset without preamble and file meta (many real exports)
            from .ingest._common import sniff_dicom

            if sniff_dicom(src):
                raise DicomError(f"not a readable DICOM file ({sniff_dicom(src)})", path=str(src),
                                 rule="input files must be DICOM")
            ds = pydicom.dcmread(str(src), force=True)
        except DicomError:
            raise
        except Exception as e:  # noqa: BLE001 - any parser failure refuses this file with its reason
            raise DicomError(f"not a readable DICOM file ({type(e).__name__})", path=str(src),
                             rule="input files must be DICOM") from None
    except (OSError, EOFError, ValueError) as e:
        raise DicomError(f"not a readable DICOM file ({type(e).__name__})", path=str(src),
                         rule="input files must be DICOM") from None
    if "DirectoryRecordSequence" in ds:
        raise DicomError("DICOMDIR skipped: its records repeat patient identity and point at the original paths",
                         path=str(src))
    _complete_uids(ds, src)
    deid.dataset(ds, where=str(src))
    _complete_meta(ds)
    target = Path(out_dir) / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID) / f"{ds.SOPInstanceUID}.dcm"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{os.getpid()}-{target.name}")
    try:
        ds.save_as(str(tmp), enforce_file_format=True)
        os.replace(tmp, target)
    except Exception as e:  # noqa: BLE001 - this file is refused with its reason; the tree goes on
        tmp.unlink(missing_ok=True)
        raise DicomError(f"cannot write the de-identified instance: {type(e).__name__}: "
                         f"{' '.join(str(e).split())[:200]}", path=str(src),
                         rule="a de-identified instance is a valid DICOM file") from None
    return target


def _complete_uids(ds, src: Path) -> None:
    """Fill an empty SOP Instance/Class UID from the file meta (or the reverse); refuse without them."""
    meta = getattr(ds, "file_meta", None)
    for kw, meta_kw in (("SOPInstanceUID", "MediaStorageSOPInstanceUID"), ("SOPClassUID", "MediaStorageSOPClassUID")):
        if not str(ds.get(kw, "") or "").strip() and meta is not None and str(meta.get(meta_kw, "") or "").strip():
            setattr(ds, kw, str(meta.get(meta_kw)))
    # Blank study/series UIDs (exports that blanked them): the same stand-in for every file of
    # the folder (series: also FrameOfReference, number, modality: what the index groups by),
    # remapped like any UID, so the de-identified series stays one series.
    group = {"StudyInstanceUID": [str(src.parent)],
             "SeriesInstanceUID": [str(src.parent), str(ds.get("FrameOfReferenceUID", "") or ""),
                                   str(ds.get("SeriesNumber", "") or ""), str(ds.get("Modality", "") or "")]}
    for kw, parts in group.items():
        if not str(ds.get(kw, "") or "").strip():
            setattr(ds, kw, hashed_uid(f"surgitwin-no-{kw}", *parts))
    missing = [kw for kw in ("SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID")
               if not str(ds.get(kw, "") or "").strip()]
    if missing:
        raise DicomError(f"DICOM instance must have SOP class, SOP instance, study and series UIDs; "
                         f"{', '.join(missing)} missing or empty", path=str(src),
                         rule="PS3.3: SOPClassUID, SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID are type 1")


def _complete_meta(ds) -> None:
    """Valid file meta for every output: SOP class/instance from the dataset, a transfer syntax
    (inferred from how a header-less file was encoded)."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

    if getattr(ds, "file_meta", None) is None:
        ds.file_meta = FileMetaDataset()
    meta = ds.file_meta
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    if not str(meta.get("TransferSyntaxUID", "") or ""):
        implicit, little = getattr(ds, "original_encoding", (None, None)) or (None, None)
        meta.TransferSyntaxUID = (ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian) if little is not False \
            else ExplicitVRBigEndian


def deidentify_datasets(datasets, *, map_path=None, allow_burned_in: bool = False) -> list:
    """De-identify pydicom Datasets in place (e.g. a SEG before ``export --deidentify``).

    With ``map_path`` the saved salt is reused, so UIDs (and the SEG's references to its source
    series) map exactly as they did when the source series was de-identified with that map.
    """
    saved = load_mapping(map_path) if map_path else None
    deid = (Deidentifier.from_mapping(saved, allow_burned_in=allow_burned_in) if saved
            else Deidentifier(allow_burned_in=allow_burned_in))
    out = [deid.dataset(ds) for ds in datasets]
    if map_path:
        save_mapping(map_path, deid.mapping())
    return out


def deidentify_file_inplace(path, *, map_path=None, allow_burned_in: bool = False) -> Path:
    """De-identify one DICOM file where it is (temp name + rename): ``export --deidentify``."""
    import pydicom

    path = Path(path)
    ds = pydicom.dcmread(str(path))
    deidentify_datasets([ds], map_path=map_path, allow_burned_in=allow_burned_in)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    ds.save_as(str(tmp), enforce_file_format=True)
    os.replace(tmp, path)
    return path


def deidentify_tree(src, out_dir, *, deid: Deidentifier | None = None, map_path=None,
                    allow_burned_in: bool = False) -> DeidReport:
    """De-identify every DICOM file under ``src`` (file or folder) into ``out_dir``.

    Non-DICOM files, DICOMDIRs and refused instances are not copied; each is listed in
    ``report.skipped`` with the reason. With ``map_path`` the mapping is read from (if it
    exists) and saved to that file; otherwise it is kept nowhere.
    """
    src, out_dir = Path(src), Path(out_dir)
    if not src.exists():
        raise DicomError("input to de-identify does not exist", path=str(src))
    if out_dir.resolve() == src.resolve() or src.resolve() in out_dir.resolve().parents:
        raise DicomError("output folder must not be inside the input (originals must stay untouched)", path=str(out_dir))
    if deid is None:
        saved = load_mapping(map_path) if map_path else None
        deid = (Deidentifier.from_mapping(saved, allow_burned_in=allow_burned_in) if saved
                else Deidentifier(allow_burned_in=allow_burned_in))
    report = DeidReport()
    files, report.skipped = _input_files(src)
    for f in files:
        try:
            out = deidentify_file(f, out_dir, deid)
        except DicomError as e:
            report.skipped.append((str(f), str(e)))
            if e.rule != "input files must be DICOM" and not str(e).startswith("DICOMDIR skipped"):
                report.refused.append((str(f), str(e)))
            continue
        except Exception as e:  # noqa: BLE001 - one file's failure never aborts the tree
            from .batch import phi

            why = phi.redact(f"{f}: cannot be de-identified: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
            report.skipped.append((str(f), why))
            report.refused.append((str(f), why))
            continue
        report.written.append(str(out))
        study = out.parent.parent.name
        report.studies[study] = report.studies.get(study, 0) + 1
    if map_path:
        save_mapping(map_path, deid.mapping())
    return report
