//! The generated tables, their files, and the column indices the generator
//! writes to.

use pds_snds::schema::{self, Family};

use crate::SynthError;
use crate::rows::columns;

/// Every table the generator writes (referentials aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// Beneficiaries.
    IrBen,
    /// ALD / exemptions.
    IrImb,
    /// DCIR prestations.
    ErPrs,
    /// DCIR pharmacy.
    ErPha,
    /// DCIR biology.
    ErBio,
    /// DCIR CCAM acts.
    ErCam,
    /// DCIR establishments.
    ErEte,
    /// PMSI MCO stays.
    McoB,
    /// PMSI MCO chaining.
    McoC,
    /// PMSI MCO associated diagnoses.
    McoD,
    /// PMSI MCO CCAM acts.
    McoA,
    /// PMSI MCO establishments.
    McoE,
    /// Death certificates.
    KiCci,
    /// Causes of death.
    KiEcd,
}

impl Table {
    /// All tables, in output order.
    pub const ALL: [Table; 14] = [
        Table::IrBen,
        Table::IrImb,
        Table::ErPrs,
        Table::ErPha,
        Table::ErBio,
        Table::ErCam,
        Table::ErEte,
        Table::McoB,
        Table::McoC,
        Table::McoD,
        Table::McoA,
        Table::McoE,
        Table::KiCci,
        Table::KiEcd,
    ];

    /// Generic SNDS name.
    pub fn generic(self) -> &'static str {
        match self {
            Table::IrBen => "IR_BEN_R",
            Table::IrImb => "IR_IMB_R",
            Table::ErPrs => "ER_PRS_F",
            Table::ErPha => "ER_PHA_F",
            Table::ErBio => "ER_BIO_F",
            Table::ErCam => "ER_CAM_F",
            Table::ErEte => "ER_ETE_F",
            Table::McoB => "T_MCOaaB",
            Table::McoC => "T_MCOaaC",
            Table::McoD => "T_MCOaaD",
            Table::McoA => "T_MCOaaA",
            Table::McoE => "T_MCOaaE",
            Table::KiCci => "KI_CCI_R",
            Table::KiEcd => "KI_ECD_R",
        }
    }

    /// Whether the table is written as one file per year.
    pub fn per_year(self) -> bool {
        let Ok((t, _)) = schema::table(self.generic()) else {
            return false;
        };
        matches!(t.family, Family::Dcir | Family::PmsiMco)
    }

    /// File stem for a year: `ER_PRS_F_2021`, `T_MCO21B`, `IR_BEN_R`.
    pub fn file_stem(self, year: u16) -> String {
        match self {
            Table::McoB | Table::McoC | Table::McoD | Table::McoA | Table::McoE => {
                schema::concrete_name(self.generic(), year)
            }
            t if t.per_year() => format!("{}_{year}", t.generic()),
            t => t.generic().to_string(),
        }
    }

    /// Position in [`Table::ALL`].
    pub fn index(self) -> usize {
        Table::ALL.iter().position(|t| *t == self).unwrap_or(0)
    }
}

columns!(
    /// `ER_PRS_F` columns.
    Prs {
        BEN_AMA_COD, BEN_CDI_NIR, BEN_CMU_TOP, BEN_DCD_DTE, BEN_NAI_ANN, BEN_NIR_PSA, BEN_RNG_GEM, BEN_RES_COM,
        BEN_RES_DPT, BEN_SEX_COD, ORG_AFF_BEN, EXE_SOI_AMD, EXE_SOI_AMF, EXE_SOI_DTD, EXE_SOI_DTF, PRE_PRE_AMD,
        PRE_PRE_DTD, PRS_HOS_DTD, BSE_REM_BSE, BSE_REM_MNT, BSE_REM_PRU, BSE_REM_SGN, CPL_REM_BSE, CPL_REM_MNT,
        CPL_REM_SGN, PRS_ACT_CFT, PRS_ACT_COG, PRS_ACT_NBR, PRS_ACT_QTE, PRS_DEP_MNT, PRS_PAI_MNT, RGM_COD,
        RGM_GRG_COD, BSE_PRS_NAT, CPL_MAJ_TOP, CPL_PRS_NAT, DPN_QLF, EXO_MTF, ORG_CLE_NEW, PRS_DPN_QLP,
        PRS_NAT_REF, RGO_REM_TAU, ETB_PRE_FIN, PFS_EXE_NUM, PFS_PRE_NUM, PSE_ACT_NAT, PSE_SPE_COD, PSE_STJ_COD,
        PSP_SPE_COD, DCT_ORD_NUM, FLX_DIS_DTD, FLX_EMT_NUM, FLX_EMT_ORD, FLX_EMT_TYP, FLX_TRT_DTD, ORG_CLE_NUM,
        PRS_ORD_NUM, REM_TYP_AFF, PRS_PPU_SEC,
    }
);

columns!(
    /// The 9 DCIR join keys plus `ORG_CLE_NEW`, shared by refinement tables.
    Keys9 {
        DCT_ORD_NUM, FLX_DIS_DTD, FLX_EMT_NUM, FLX_EMT_ORD, FLX_EMT_TYP, FLX_TRT_DTD, ORG_CLE_NUM, PRS_ORD_NUM,
        REM_TYP_AFF, ORG_CLE_NEW,
    }
);

columns!(
    /// `ER_PHA_F` columns.
    Pha { PHA_ACT_PRU, PHA_ACT_QSN, PHA_ORD_NUM, PHA_PRS_C13, PHA_SEQ_RNV }
);

columns!(
    /// `ER_BIO_F` columns.
    Bio { BIO_ACT_QSN, BIO_ORD_NUM, BIO_PRS_IDE }
);

columns!(
    /// `ER_CAM_F` columns.
    Cam { CAM_ACT_COD, CAM_ACT_PRU, CAM_ORD_NUM, CAM_PRS_IDE, CAM_REM_BSE, CAM_TRT_PHA }
);

columns!(
    /// `ER_ETE_F` columns.
    Ete { ETB_EXE_FIN, ETE_CAT_COD, ETE_IND_TAA, PRS_PPU_SEC, ETE_GHS_NUM }
);

columns!(
    /// `IR_BEN_R` columns.
    Ben {
        BEN_NIR_PSA, BEN_RNG_GEM, BEN_NIR_ANO, BEN_IDT_ANO, BEN_IDT_TOP, BEN_CDI_NIR, BEN_NAI_ANN, BEN_NAI_MOI,
        BEN_SEX_COD, BEN_DCD_DTE, BEN_DCD_AME, ORG_AFF_BEN, BEN_RES_DPT, BEN_RES_COM, BEN_TOP_CNS, MAX_TRT_DTD,
        BEN_DTE_INS, BEN_DTE_MAJ,
    }
);

columns!(
    /// `IR_IMB_R` columns.
    Imb {
        BEN_NIR_PSA, BEN_RNG_GEM, IMB_ALD_DTD, IMB_ALD_DTF, IMB_ALD_NUM, IMB_ETM_NAT, INS_DTE, MED_MTF_COD,
        MED_NCL_IDT, UPD_DTE,
    }
);

columns!(
    /// `T_MCOaaB` columns.
    McoB {
        AGE_ANN, AGE_JOU, BDI_COD, BDI_DEP, COD_SEX, DGN_PAL, DGN_REL, ENT_MOD, ENT_PRV, ETA_NUM, GHS_NUM, GRG_GHM,
        GRG_RET, NBR_ACT, NBR_DGN, NBR_RUM, NBR_SEA, RSA_NUM, SEJ_NBJ, SEJ_TYP, SOR_ANN, SOR_DES, SOR_MOD, SOR_MOI,
        TYP_GEN_RSA,
    }
);

columns!(
    /// `T_MCOaaC` columns.
    McoC {
        COH_NAI_RET, COH_SEX_RET, DAT_RET, ENT_DAT, ETA_NUM, EXE_SOI_AMD, EXE_SOI_AMF, EXE_SOI_DTD, EXE_SOI_DTF,
        FHO_RET, NAI_RET, NIR_ANO_17, NIR_RET, PMS_RET, RSA_NUM, SEJ_NUM, SEJ_RET, SEX_RET, SOR_ANN, SOR_DAT,
        SOR_MOI,
    }
);

columns!(
    /// `T_MCOaaD` columns.
    McoD { ASS_DGN, DGN_ASS_NUM, ETA_NUM, RSA_NUM }
);

columns!(
    /// `T_MCOaaA` columns.
    McoA { ACV_ACT, CDC_ACT, ENT_DAT_DEL, ETA_NUM, NBR_EXE_ACT, PHA_ACT, RSA_NUM }
);

columns!(
    /// `T_MCOaaE` columns.
    McoE { ANN_TRT, ETA_NUM, ETB_EXE_FIN, REG_ETA, SOC_RAI, STA_ETA, VAL_ETA }
);

columns!(
    /// `KI_CCI_R` columns.
    Cci {
        DCD_IDT_ENC, DCD_IDT_TOP, BEN_IDT_ANO, BEN_IDT_TOP, BEN_NIR_ANO, FLX_PER_ANN, DCD_DPT_COD, BEN_RES_DPT,
        BEN_RES_COM, BEN_DCD_DTE, BEN_DCD_AME, DCD_LIE_COD, BEN_NAI_ANN, BEN_NAI_MOI, BEN_SEX_COD, DCD_CIM_COD,
    }
);

columns!(
    /// `KI_ECD_R` columns.
    Ecd {
        DCD_IDT_ENC, DCD_IDT_TOP, BEN_IDT_ANO, BEN_IDT_TOP, BEN_NIR_ANO, FLX_PER_ANN, CER_LIG_NUM, ECD_CAU_RNG,
        ECD_CAU_LIB, ECD_CIM_COD, BEN_DCD_DTE, BEN_DCD_AME,
    }
);

/// Column indices of every table for one year.
#[derive(Debug, Clone)]
pub struct YearColumns {
    /// `ER_PRS_F`.
    pub prs: Prs,
    /// Keys of each refinement table (PHA, BIO, CAM, ETE).
    pub keys: [Keys9; 4],
    /// `ER_PHA_F`.
    pub pha: Pha,
    /// `ER_BIO_F`.
    pub bio: Bio,
    /// `ER_CAM_F`.
    pub cam: Cam,
    /// `ER_ETE_F`.
    pub ete: Ete,
    /// `T_MCOaaB`.
    pub b: McoB,
    /// `T_MCOaaC`.
    pub c: McoC,
    /// `T_MCOaaD`.
    pub d: McoD,
    /// `T_MCOaaA`.
    pub a: McoA,
    /// `T_MCOaaE`.
    pub e: McoE,
    /// `IR_BEN_R`.
    pub ben: Ben,
    /// `IR_IMB_R`.
    pub imb: Imb,
    /// `KI_CCI_R`.
    pub cci: Cci,
    /// `KI_ECD_R`.
    pub ecd: Ecd,
}

fn cols(t: Table, year: u16) -> Result<Vec<&'static pds_snds::Column>, SynthError> {
    let (s, _) = schema::table(t.generic()).map_err(|e| SynthError::Schema(e.to_string()))?;
    Ok(s.columns_for_year(year))
}

fn all(t: Table) -> Result<&'static [pds_snds::Column], SynthError> {
    let (s, _) = schema::table(t.generic()).map_err(|e| SynthError::Schema(e.to_string()))?;
    Ok(&s.columns)
}

impl YearColumns {
    /// Resolves every index for `year`.
    pub fn resolve(year: u16) -> Result<Self, SynthError> {
        let c = |t| cols(t, year);
        Ok(YearColumns {
            prs: Prs::resolve("ER_PRS_F", &c(Table::ErPrs)?, all(Table::ErPrs)?)?,
            keys: [
                Keys9::resolve("ER_PHA_F", &c(Table::ErPha)?, all(Table::ErPha)?)?,
                Keys9::resolve("ER_BIO_F", &c(Table::ErBio)?, all(Table::ErBio)?)?,
                Keys9::resolve("ER_CAM_F", &c(Table::ErCam)?, all(Table::ErCam)?)?,
                Keys9::resolve("ER_ETE_F", &c(Table::ErEte)?, all(Table::ErEte)?)?,
            ],
            pha: Pha::resolve("ER_PHA_F", &c(Table::ErPha)?, all(Table::ErPha)?)?,
            bio: Bio::resolve("ER_BIO_F", &c(Table::ErBio)?, all(Table::ErBio)?)?,
            cam: Cam::resolve("ER_CAM_F", &c(Table::ErCam)?, all(Table::ErCam)?)?,
            ete: Ete::resolve("ER_ETE_F", &c(Table::ErEte)?, all(Table::ErEte)?)?,
            b: McoB::resolve("T_MCOaaB", &c(Table::McoB)?, all(Table::McoB)?)?,
            c: McoC::resolve("T_MCOaaC", &c(Table::McoC)?, all(Table::McoC)?)?,
            d: McoD::resolve("T_MCOaaD", &c(Table::McoD)?, all(Table::McoD)?)?,
            a: McoA::resolve("T_MCOaaA", &c(Table::McoA)?, all(Table::McoA)?)?,
            e: McoE::resolve("T_MCOaaE", &c(Table::McoE)?, all(Table::McoE)?)?,
            ben: Ben::resolve("IR_BEN_R", &c(Table::IrBen)?, all(Table::IrBen)?)?,
            imb: Imb::resolve("IR_IMB_R", &c(Table::IrImb)?, all(Table::IrImb)?)?,
            cci: Cci::resolve("KI_CCI_R", &c(Table::KiCci)?, all(Table::KiCci)?)?,
            ecd: Ecd::resolve("KI_ECD_R", &c(Table::KiEcd)?, all(Table::KiEcd)?)?,
        })
    }
}

/// The column list of a table as written for `year` (for headers and Parquet).
pub fn table_columns(t: Table, year: u16) -> Result<Vec<&'static pds_snds::Column>, SynthError> {
    cols(t, year)
}
