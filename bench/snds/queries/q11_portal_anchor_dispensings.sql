-- Anchor (CNAM portal: 12-16 minutes): one year of dispensings of one drug class
-- (analgesics, ATC N02), every row returned to the client.
-- bench: ignore-columns 1
SELECT p.BEN_NIR_PSA, p.EXE_SOI_DTD, f.PHA_PRS_C13, r.PHA_ATC_C07, f.PHA_ACT_QSN, p.PRS_PAI_MNT
FROM ER_PRS_F p
JOIN ER_PHA_F f ON f.FLX_DIS_DTD = p.FLX_DIS_DTD AND f.FLX_TRT_DTD = p.FLX_TRT_DTD AND f.FLX_EMT_TYP = p.FLX_EMT_TYP
      AND f.FLX_EMT_NUM = p.FLX_EMT_NUM AND f.FLX_EMT_ORD = p.FLX_EMT_ORD AND f.ORG_CLE_NUM = p.ORG_CLE_NUM
      AND f.DCT_ORD_NUM = p.DCT_ORD_NUM AND f.PRS_ORD_NUM = p.PRS_ORD_NUM AND f.REM_TYP_AFF = p.REM_TYP_AFF
JOIN IR_PHA_R r ON r.PHA_CIP_C13 = f.PHA_PRS_C13
WHERE p.EXE_SOI_DTD BETWEEN DATE '{year}-01-01' AND DATE '{year}-12-31'
  AND p.DPN_QLF <> 71 AND r.PHA_ATC_C07 LIKE 'N02%'
